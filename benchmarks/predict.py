"""Prediction speed: batched vs frame-by-frame video prediction, SavedModel vs Keras latency.

One run, one process, this CPU:

1. End-to-end video prediction (decode -> MTCNN detection -> crop -> classify) in
   frames/s, with batches of `--batch` frames against one frame at a time
   (`fer_tf.predict.predict_video`). The video is written here from a real photo
   (``--photo``): the face pasted at a drifting position on a `--width`x`--height`
   background, every 8th frame blank.
2. Classification latency of the exported SavedModel (`fer_tf.export`, its
   ``predict_images`` signature) against the Keras model (`fer_tf.inference`), at
   batch 1 and 32, on uint8 112x112 crops. Median of `--repeats` calls after warm-up.
3. Face tracking, with the shipped model: frames/s of per-frame detection against the
   default (`fer_tf.predict.DEFAULT_DETECT_EVERY`: the detector every k-th frame,
   optical flow between) on a camera pan over a real photo of five faces
   (``--multi_face_photo``; no real video is stored here), the boxes' mean IoU against
   per-frame detection, label agreement, and the final ratio line.

The model is a randomly initialised `--backbone` ("small" by default: SE-ResNet
blocks (1,1,1,1), width 32, 112x112 input); speed does not depend on the weights.

    python benchmarks/predict.py [--backbone=small] [--frames=96] [--batch=32] [--repeats=20]
"""

import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "small", "Model size: tiny, small or senet50.")
flags.DEFINE_string("photo", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                          "faces", "fer_justin.jpg"), "Real face photo for the video.")
flags.DEFINE_integer("frames", 96, "Frames of the generated video.")
flags.DEFINE_integer("width", 640, "Video width.")
flags.DEFINE_integer("height", 360, "Video height.")
flags.DEFINE_integer("batch", 32, "Frames per batch in the batched run.")
flags.DEFINE_integer("repeats", 20, "Timed calls per latency measurement (median reported).")
flags.DEFINE_string("multi_face_photo", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "faces", "pyfeat_multi_face.jpg"),
    "Real photo of several faces for the tracking rows' camera pan.")
flags.DEFINE_integer("pan_frames", 150, "Frames of the camera-pan video (tracking rows).")


def _write_video(path, photo_path, frames, width, height, fps=25.0):
    import cv2
    import numpy as np

    from fer_tf import faces

    face = faces.read_image_rgb(photo_path)
    side = int(min(height, width) * 0.6)
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for t in range(frames):
        frame = np.full((height, width, 3), 70, np.uint8)
        if t % 8 != 7:
            x = int((width - side) * (0.5 + 0.4 * np.sin(t / 15)))
            y = (height - side) // 2
            frame[y:y + side, x:x + side] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _median_seconds(fn, repeats):
    fn()
    fn()  # warm-up: tracing and allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv):
    del argv
    work = tempfile.mkdtemp(prefix="fer_tf_bench_")
    try:
        _run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work):
    import keras
    import numpy as np

    from fer_tf import export, faces, inference, model as model_lib, predict

    keras.utils.set_random_seed(0)
    model = model_lib.build_expression_model(FLAGS.backbone)
    model_path = os.path.join(work, "model.keras")
    model.save(model_path)
    video_path = os.path.join(work, "clip.mp4")
    _write_video(video_path, FLAGS.photo, FLAGS.frames, FLAGS.width, FLAGS.height)
    detector = faces.FaceDetector()

    print(f"backbone {FLAGS.backbone}, video {FLAGS.frames} frames {FLAGS.width}x{FLAGS.height} "
          f"(face in 7 of 8 frames), {os.cpu_count()} CPU threads")
    rates = {}
    for batch in (FLAGS.batch, 1):
        classifier = inference.load_classifier(model_path, batch_size=batch)
        predictor = predict.FacePredictor(classifier, detector)
        predict.predict_video(predictor, video_path, batch, progress=False)  # warm-up: tracing
        start = time.perf_counter()
        result = predict.predict_video(predictor, video_path, batch, progress=False)
        rates[batch] = result.num_frames / (time.perf_counter() - start)
        faces_found = result.frames_with_face
    print(f"\n{'end-to-end video prediction':<34}{'frames/s':>10}")
    print(f"{'batched (' + str(FLAGS.batch) + ' frames)':<34}{rates[FLAGS.batch]:>10.1f}")
    print(f"{'frame by frame':<34}{rates[1]:>10.1f}")
    print(f"({faces_found} of {FLAGS.frames} frames had a face)")

    export_dir = export.export_saved_model(model, os.path.join(work, "export", "1"))
    keras_classifier = inference.load_classifier(model_path, batch_size=256)
    saved_classifier = inference.load_classifier(export_dir, batch_size=256)
    rng = np.random.default_rng(0)
    print(f"\n{'classification latency (ms/call)':<34}{'Keras':>10}{'SavedModel':>12}{'ratio':>8}")
    latency = {}
    for batch in (1, 32):
        crops = rng.integers(0, 256, (batch, 112, 112, 3), dtype=np.uint8)
        k = _median_seconds(lambda: keras_classifier.predict_probabilities(crops), FLAGS.repeats)
        s = _median_seconds(lambda: saved_classifier.predict_probabilities(crops), FLAGS.repeats)
        latency[batch] = (k, s)
        print(f"{'batch ' + str(batch):<34}{k * 1e3:>10.2f}{s * 1e3:>12.2f}{s / k:>8.2f}")
    print(f"\nratio: batched / frame-by-frame video frames/s = {rates[FLAGS.batch] / rates[1]:.2f}")
    for batch, (k, s) in latency.items():
        print(f"ratio: SavedModel / Keras latency at batch {batch} = {s / k:.2f}")
    _tracking_rows(work, detector)


def _agreement(reference, other):
    """Mean IoU of each per-frame-detected face with its best match in ``other``, and the
    share of those faces given the same label."""
    import numpy as np

    from fer_tf import tracking

    ious, same = [], []
    for frame in sorted({r.frame for r in reference.rows}):
        ref = [r for r in reference.rows if r.frame == frame]
        got = [r for r in other.rows if r.frame == frame]
        if not got:
            ious += [0.0] * len(ref)
            same += [False] * len(ref)
            continue
        overlap = tracking.iou_matrix([r.box for r in ref], [r.box for r in got])
        ious += list(overlap.max(axis=1))
        same += [r.label == got[j].label for r, j in zip(ref, overlap.argmax(axis=1))]
    return float(np.mean(ious)), float(np.mean(same))


def _tracking_rows(work, detector):
    """Per-frame detection vs the default detect-every-k with optical flow, shipped model."""
    from fer_tf import faces, inference, predict, video

    path = video.write_camera_pan(faces.read_image_rgb(FLAGS.multi_face_photo),
                                  os.path.join(work, "pan.mp4"), FLAGS.pan_frames)
    predictor = predict.FacePredictor(inference.load_classifier(None, batch_size=FLAGS.batch),
                                      detector)
    predict.predict_video(predictor, path, FLAGS.batch, progress=False, detect_every=1)  # warm-up
    results, rates = {}, {}
    for every in (1, predict.DEFAULT_DETECT_EVERY):
        start = time.perf_counter()
        results[every] = predict.predict_video(predictor, path, FLAGS.batch, progress=False,
                                               detect_every=every)
        rates[every] = results[every].num_frames / (time.perf_counter() - start)
    default = predict.DEFAULT_DETECT_EVERY
    iou, same = _agreement(results[1], results[default])
    print(f"\nshipped model, {FLAGS.pan_frames}-frame camera pan over "
          f"{os.path.basename(FLAGS.multi_face_photo)} (640x360)")
    print(f"{'video path':<34}{'frames/s':>10}{'detector runs':>15}{'tracks':>8}")
    for every, result in results.items():
        name = "detect every frame" if every == 1 else f"detect every {every} + flow"
        print(f"{name:<34}{rates[every]:>10.1f}{result.detections:>15}"
              f"{len({r.track_id for r in result.rows}):>8}")
    print(f"boxes against per-frame detection: mean IoU {iou:.3f}, same label {same:.3f}")
    print(f"ratio: detect every {default} / every frame, end-to-end frames/s = "
          f"{rates[default] / rates[1]:.2f}")


if __name__ == "__main__":
    app.run(main)
