"""Classification speed of the shipped model per export format: Keras, SavedModel, ONNX, LiteRT.

One run, one process, this CPU. The shipped model (`fer_tf.pretrained`, 48x48 gray
faces) is exported to a temporary folder as a SavedModel (``predict_images``
signature), an ONNX file (run by ONNX Runtime, CPU provider) and a LiteRT file (run
by `ai_edge_litert.interpreter`, XNNPACK), all with `fer_tf.export`. Each is called
on real face crops (the shared photos, cropped and brought to 48x48 as
`fer_tf.faces.crop_faces` does; repeated to fill a batch) at batch 1 and 32: the
median of `--repeats` calls after two warm-up calls, in ms per call and images/s,
and the largest relative error of its probabilities against Keras'. Every runtime
gets all of the machine's threads.

Last, what a client without TensorFlow loses by resizing with OpenCV's INTER_AREA
instead of `fer_tf.data.pipeline.resize_uint8` (docs/exports.md): the largest
probability difference on the same faces, through the ONNX file.

    python benchmarks/export_formats.py [--repeats=50]
"""

import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 50, "Timed calls per measurement (median reported).")
flags.DEFINE_string("faces_dir", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                              "data", "faces"), "Folder of the real face photos.")

# Face boxes (x, y, w, h) MTCNN finds in the shared photos (as tests/test_export_formats.py).
FACE_BOXES = {
    "fer_justin.jpg": [(106, 76, 155, 209)],
    "pyfeat_single_face.jpg": [(180, 141, 192, 260)],
    "pyfeat_multi_face.jpg": [(218, 64, 88, 111), (534, 299, 98, 137)],
    "ina_India_236650352.jpg": [(46, 32, 57, 70), (239, 208, 198, 259)],
}
BATCHES = (1, 32)


def _median_seconds(fn, repeats):
    """Median wall time of ``fn()`` over ``repeats`` calls after two warm-up calls."""
    fn()
    fn()  # warm-up: tracing, allocation, XNNPACK packing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _windows(faces_dir, margin):
    """The square face windows of the photos (uint8 RGB, various sizes)."""
    from fer_tf import faces

    windows = []
    for name, boxes in FACE_BOXES.items():
        image = faces.read_image_rgb(os.path.join(faces_dir, name))
        for box in boxes:
            x0, y0, side = faces.square_box(box, margin)
            windows.append(image[max(y0, 0):y0 + side, max(x0, 0):x0 + side])
    return windows


def _runners(work, model, decode_size):
    """Exports the model to every format; returns {name: fn(uint8 crops) -> probabilities}."""
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from fer_tf import export, inference, pretrained

    keras_classifier = inference.load_classifier(None, batch_size=256)
    saved_dir = export.export_saved_model(model, os.path.join(work, "saved", "1"),
                                          decode_size=decode_size)
    saved = export.load_exported(saved_dir).predict_images
    source = pretrained.shipped_path()
    onnx_path = export.export_file(source, os.path.join(work, "fer.onnx"), "onnx")
    litert_path = export.export_file(source, os.path.join(work, "fer.tflite"), "litert")

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    # One interpreter per batch size: resizing the input re-plans the whole graph.
    litert = {b: Interpreter(model_path=litert_path, num_threads=os.cpu_count())
              .get_signature_runner() for b in BATCHES}
    return {
        "Keras": keras_classifier.predict_probabilities,
        "SavedModel": lambda x: saved(images=tf.constant(x))["probabilities"].numpy(),
        "ONNX Runtime": lambda x: session.run(["probabilities"], {"images": x})[0],
        "LiteRT": lambda x: np.asarray(litert[len(x)](images=x)["probabilities"]),
    }


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    work = tempfile.mkdtemp(prefix="fer_tf_bench_exports_")
    try:
        _run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work):
    import cv2
    import numpy as np
    import tensorflow as tf

    from fer_tf import model as model_lib
    from fer_tf import pretrained
    from fer_tf.data import pipeline

    model = model_lib.load_expression_model(pretrained.shipped_path())
    contract = model_lib.input_contract(model)
    size = contract.decode_size
    windows = _windows(FLAGS.faces_dir, contract.crop_margin or 0.0)
    crops = np.stack([pipeline.resize_uint8(tf.constant(w), size).numpy() for w in windows])
    runners = _runners(work, model, size)

    print(f"shipped model {model.name} ({model.count_params():,} parameters), {size}x{size} "
          f"gray crops of {len(crops)} real faces, {os.cpu_count()} CPU threads, "
          f"median of {FLAGS.repeats} calls")
    print(f"{'format':<14}{'batch':>6}{'ms/call':>10}{'images/s':>10}{'max rel. err vs Keras':>23}")
    latency = {}
    for batch in BATCHES:
        x = np.ascontiguousarray(np.resize(crops, (batch,) + crops.shape[1:]))
        reference = runners["Keras"](x)
        for name, fn in runners.items():
            seconds = _median_seconds(lambda: fn(x), FLAGS.repeats)
            latency[name, batch] = seconds
            rel = np.max(np.abs(np.asarray(fn(x)) - reference) / reference)
            print(f"{name:<14}{batch:>6}{seconds * 1e3:>10.2f}{batch / seconds:>10.1f}{rel:>23.2g}")
    for batch in BATCHES:
        for name in runners:
            if name != "Keras":
                ratio = latency[name, batch] / latency["Keras", batch]
                print(f"ratio: {name} / Keras latency at batch {batch} = {ratio:.2f}")

    area = np.stack([cv2.resize(w, (size, size), interpolation=cv2.INTER_AREA) for w in windows])
    onnx = runners["ONNX Runtime"]
    diff = np.abs(onnx(area) - onnx(crops)).max()
    levels = np.abs(area.astype(int) - crops.astype(int))
    print(f"client resize cv2.INTER_AREA instead of resize_uint8: pixels differ by "
          f"{levels.mean():.2f} grey levels on average (max {levels.max()}), probabilities "
          f"by up to {diff:.3f}")


if __name__ == "__main__":
    app.run(main)
