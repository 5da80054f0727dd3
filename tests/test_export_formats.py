"""Tests of the single-file exports (--format=onnx|litert): parity with Keras, contract, CLI.

Parity: a fresh process that imports only numpy and the format's runtime (onnxruntime,
resp. the LiteRT interpreter `ai_edge_litert.interpreter`; no TensorFlow, Keras or
fer_tf) does what docs/exports.md tells a client to do and reproduces softmax(logits)
of the Keras model on real face crops at relative error <= 1e-5 (`RTOL`).

The crops are made the way docs/exports.md prescribes (and `fer_tf.predict` does):
`fer_tf.faces.crop_faces`, i.e. a square window around the face resized to the model's
decode size by `fer_tf.data.pipeline.resize_uint8`; the files take them from there.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from fer_tf import classes, export, faces, pretrained
from fer_tf import model as model_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RTOL = 1e-5  # max relative error of any probability against Keras

# Face boxes (x, y, w, h) that MTCNN (fer_tf.faces.FaceDetector) finds in the shared
# photos, fixed here so the tests need no detector.
FACE_BOXES = {
    "fer_justin.jpg": [(106, 76, 155, 209)],
    "pyfeat_single_face.jpg": [(180, 141, 192, 260)],
    "pyfeat_multi_face.jpg": [(218, 64, 88, 111), (534, 299, 98, 137)],
    "ina_India_236650352.jpg": [(46, 32, 57, 70), (239, 208, 198, 259)],
}

# What a client does with an ONNX file (docs/exports.md, "Input contract"): uint8 RGB
# crops [B, D, D, 3] fed as "images", outputs read by name. numpy and onnxruntime only.
ONNX_CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["fer_tf_export"])
    crops = np.load(sys.argv[2])
    size = meta["decode_size"]
    assert crops.dtype == np.uint8 and crops.shape[1:] == (size, size, 3), crops.shape
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, {"images": crops})))
    single = session.run(["probabilities"], {"images": crops[:1]})[0]  # another batch size
    np.save(sys.argv[3], outputs["probabilities"])
    print(json.dumps({
        "modules": sorted(m for m in sys.modules
                          if m.split(".")[0] in ("tensorflow", "keras", "fer_tf", "tf2onnx")),
        "class_index": outputs["class_index"].tolist(),
        "class_names": meta["class_names"],
        "single": single.tolist(),
    }))
    """
)

# The same with the LiteRT interpreter: its signature runner resizes the batch itself.
LITERT_CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=sys.argv[1])
    runner = interpreter.get_signature_runner("serving_default")
    crops = np.load(sys.argv[2])
    assert crops.dtype == np.uint8 and crops.ndim == 4 and crops.shape[-1] == 3
    outputs = runner(images=crops)
    single = runner(images=crops[:1])["probabilities"]  # another batch size
    np.save(sys.argv[3], outputs["probabilities"])
    print(json.dumps({
        "modules": sorted(m for m in sys.modules
                          if m.split(".")[0] in ("tensorflow", "keras", "fer_tf", "tf2onnx")),
        "class_index": outputs["class_index"].tolist(),
        "single": single.tolist(),
    }))
    """
)


def _assert_relative_close(actual, expected, what):
    rel = np.max(np.abs(actual - expected) / np.abs(expected))
    assert rel <= RTOL, f"{what}: max relative error {rel:.3g} > {RTOL}"


def _keras_probabilities(model, crops):
    return tf.nn.softmax(model(tf.constant(crops.astype(np.float32)), training=False)).numpy()


@pytest.fixture(scope="module")
def shipped():
    return model_lib.load_expression_model(pretrained.shipped_path())


@pytest.fixture(scope="module")
def face_crops(faces_dir, shipped):
    """Real face crops at the shipped model's decode size, framed by its crop margin."""
    contract = model_lib.input_contract(shipped)
    crops = [faces.crop_faces(faces.read_image_rgb(faces_dir / name), boxes,
                              margin=contract.crop_margin, size=contract.decode_size)
             for name, boxes in FACE_BOXES.items()]
    return np.concatenate(crops)


def _run_client(script, model_file, crops, tmp_path):
    """Runs a client script in a fresh process without fer_tf on the path; returns
    (probabilities, its JSON report)."""
    np.save(tmp_path / "crops.npy", crops)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)  # so fer_tf cannot be imported by accident
    result = subprocess.run(
        [sys.executable, "-c", script, str(model_file), str(tmp_path / "crops.npy"),
         str(tmp_path / "probs.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(tmp_path / "probs.npy"), json.loads(result.stdout.strip().splitlines()[-1])


def _export_cli(*argv, prelude=""):
    """``python -m fer_tf.export ARGV`` in a subprocess, after running ``prelude``."""
    code = ("import runpy, sys\n" + prelude +
            f"\nsys.argv = ['fer_tf.export'] + {list(argv)!r}\n"
            "runpy.run_module('fer_tf.export', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """The shipped model exported to ONNX through the command line."""
    path = tmp_path_factory.mktemp("onnx") / "fer2013.onnx"
    proc = _export_cli("--format=onnx", f"--output={path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(path)
    return path


@pytest.fixture(scope="module")
def litert_file(tmp_path_factory):
    """The shipped model exported to LiteRT through the library."""
    path = tmp_path_factory.mktemp("litert") / "fer2013.tflite"
    assert export.export_file(None, path, "litert") == str(path)
    return path


def test_onnx_fresh_process_parity_on_real_faces(shipped, face_crops, onnx_file, tmp_path):
    served, report = _run_client(ONNX_CLIENT, onnx_file, face_crops, tmp_path)
    assert report["modules"] == [], "the client must need onnxruntime and numpy only"
    expected = _keras_probabilities(shipped, face_crops)
    assert served.shape == (len(face_crops), classes.NUM_CLASSES)
    _assert_relative_close(served, expected, "ONNX Runtime vs Keras")
    _assert_relative_close(np.asarray(report["single"]), expected[:1], "ONNX batch 1 vs Keras")
    assert report["class_index"] == expected.argmax(axis=1).tolist()
    assert report["class_names"] == list(classes.CLASS_NAMES)


def test_litert_fresh_process_parity_on_real_faces(shipped, face_crops, litert_file, tmp_path):
    served, report = _run_client(LITERT_CLIENT, litert_file, face_crops, tmp_path)
    assert report["modules"] == [], "the client must need ai_edge_litert and numpy only"
    expected = _keras_probabilities(shipped, face_crops)
    assert served.shape == (len(face_crops), classes.NUM_CLASSES)
    _assert_relative_close(served, expected, "LiteRT vs Keras")
    _assert_relative_close(np.asarray(report["single"]), expected[:1], "LiteRT batch 1 vs Keras")
    assert report["class_index"] == expected.argmax(axis=1).tolist()


def test_files_carry_the_contract(onnx_file, litert_file):
    for path, fmt in ((onnx_file, "onnx"), (litert_file, "litert")):
        meta = export.read_file_metadata(path)
        assert meta["format"] == fmt
        assert meta["class_names"] == list(classes.CLASS_NAMES)
        assert meta["decode_size"] == 48 and meta["model_input_size"] == 48
        assert meta["grayscale"] is True
        assert "48, 48, 3" in meta["inputs"]["images"]


def test_tiny_colour_model_resizes_in_the_file(tmp_path):
    """A colour model whose network size (64) differs from its decode size (48): the
    in-graph resize converts too. In-process runtimes, same tolerance."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    keras_model = model_lib.build_expression_model("tiny", seed=0, decode_size=48)
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    expected = _keras_probabilities(keras_model, crops)
    onnx_path = export.export_model_file(keras_model, tmp_path / "tiny.onnx", "onnx",
                                         decode_size=48)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"images": crops})
    _assert_relative_close(probabilities, expected, "tiny ONNX vs Keras")
    litert_path = export.export_model_file(keras_model, tmp_path / "tiny.tflite", "litert",
                                           decode_size=48)
    runner = Interpreter(model_path=litert_path).get_signature_runner()
    _assert_relative_close(runner(images=crops)["probabilities"], expected, "tiny LiteRT vs Keras")

    # An existing file is kept without overwrite, replaced with it, nothing left beside.
    before = pathlib.Path(litert_path).read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_model_file(keras_model, litert_path, "litert", decode_size=48)
    export.export_model_file(keras_model, litert_path, "litert", overwrite=True, decode_size=40)
    assert pathlib.Path(litert_path).read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["tiny.onnx", "tiny.tflite"]


def test_outputs_never_replace_the_model(tmp_path):
    model_file = tmp_path / "best_model.keras"
    model_file.write_bytes(pathlib.Path(pretrained.shipped_path()).read_bytes())
    with pytest.raises(ValueError, match="must end with .onnx"):
        export.export_file(model_file, model_file, "onnx", overwrite=True)
    renamed = tmp_path / "model.onnx"
    os.symlink(model_file, renamed)  # the model under an output's name
    with pytest.raises(ValueError, match="also an input"):
        export.export_file(model_file, renamed, "onnx", overwrite=True)
    assert model_file.read_bytes() == pathlib.Path(pretrained.shipped_path()).read_bytes()


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("fer_tf.export: error:")]


def test_cli_missing_package_is_one_line_with_the_pip_command(tmp_path):
    # A None entry in sys.modules makes `import tf2onnx` fail as if it were not installed.
    output = tmp_path / "fer.onnx"
    proc = _export_cli("--format=onnx", f"--output={output}",
                       prelude="sys.modules['tf2onnx'] = None")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (error,) = _error_lines(proc)
    assert "'tf2onnx'" in error and "pip install 'fer_tf[export]'" in error
    assert not output.exists()


def test_cli_destination_flags(tmp_path):
    proc = _export_cli("--format=litert")
    assert proc.returncode == 2
    (error,) = _error_lines(proc)
    assert "--format=litert needs --output" in error
    proc = _export_cli("--format=onnx", f"--output={tmp_path / 'a.onnx'}",
                       f"--export_dir={tmp_path / '1'}")
    assert proc.returncode == 2
    (error,) = _error_lines(proc)
    assert "--export_dir does not apply" in error
