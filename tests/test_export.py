"""Tests of the TF Serving export: parity with Keras, signatures, bad bytes, CLI.

All parity checks compare the SavedModel's probabilities with softmax(model(images))
of the Keras model at relative error <= 1e-5 (the issue's tolerance).
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fer_tf import classes, export, inference
from fer_tf.data import pipeline
from fer_tf import model as model_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RTOL = 1e-5
DECODE_SIZE = inference.DEFAULT_INPUT_SIZE  # the fixtures' workdir has no flags.txt


def _keras_probabilities(model, images):
    """softmax(logits) of the Keras model on RGB uint8 images brought to the decode size
    the way training and evaluation bring them (`pipeline.resize_uint8`)."""
    images = np.stack([pipeline.resize_uint8(tf.constant(i), DECODE_SIZE).numpy() for i in images])
    logits = model(tf.constant(images.astype(np.float32)), training=False)
    return tf.nn.softmax(logits, axis=-1).numpy()


def _assert_relative_close(actual, expected, what):
    rel = np.max(np.abs(actual - expected) / np.abs(expected))
    assert rel <= RTOL, f"{what}: max relative error {rel:.3g} > {RTOL}"


def _subprocess_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)  # so fer_tf cannot be imported by accident
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model saved to a .keras file as a training run would, and the model."""
    keras_model = model_lib.build_expression_model("tiny", seed=0)
    workdir = tmp_path_factory.mktemp("workdir")
    path = workdir / model_lib.BEST_MODEL_FILE
    keras_model.save(path)
    return keras_model, path


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    _, path = trained
    export_dir = tmp_path_factory.mktemp("serving") / "fer" / "1"
    export_dir.mkdir(parents=True)  # an empty folder is not an export: filled, no error
    return export.export(path, export_dir)


@pytest.fixture(scope="module")
def loaded(exported):
    return export.load_exported(exported)


def test_fresh_process_parity_predict_images(trained, exported, tmp_path):
    """A process with TensorFlow only (no fer_tf, no new Keras modules) reproduces Keras."""
    keras_model, _ = trained
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 50, 40, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import tensorflow as tf

        def keras_modules():
            return sorted(m for m in sys.modules if m == "keras" or m.startswith("keras."))

        before = keras_modules()
        module = tf.saved_model.load(sys.argv[1])
        out = module.signatures["predict_images"](images=tf.constant(np.load(sys.argv[2])))
        np.save(sys.argv[3], out["probabilities"].numpy())
        print(json.dumps({
            "fer_tf": sorted(m for m in sys.modules if m.split(".")[0] == "fer_tf"),
            "new_keras": sorted(set(keras_modules()) - set(before)),
            "class_index": out["class_index"].numpy().tolist(),
        }))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, exported, str(tmp_path / "images.npy"),
         str(tmp_path / "probs.npy")],
        cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["fer_tf"] == [], "the export must load without fer_tf"
    assert report["new_keras"] == [], "loading the export must not import Keras"
    served = np.load(tmp_path / "probs.npy")
    expected = _keras_probabilities(keras_model, images)
    assert served.shape == (3, classes.NUM_CLASSES)
    _assert_relative_close(served, expected, "predict_images vs Keras")
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-6)
    assert report["class_index"] == expected.argmax(axis=1).tolist()


def _encode(array, fmt, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_serving_default_on_real_jpeg_png_and_gray_bytes(trained, loaded, faces_dir):
    """Encoded images of different sizes and formats in one request, as a client sends."""
    keras_model, _ = trained
    jpeg = (faces_dir / "pyfeat_single_face.jpg").read_bytes()  # the real file, 572x562
    photo = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    png_pixels = photo[100:164, 200:264]  # 64x64: enlarged to the decode size, no antialias
    png = _encode(png_pixels, "PNG")
    gray = _encode(np.asarray(Image.fromarray(photo).convert("L").resize((48, 48))), "JPEG")

    out = loaded.serving_default(image_bytes=tf.constant([jpeg, png, gray]))

    # Reference pixels: TensorFlow's JPEG decoder (the same libjpeg output the graph
    # sees; PIL's differs by a few levels); PNG is lossless so PIL's pixels are exact;
    # gray JPEG decoded to one channel and repeated (what channels=3 must do).
    references = [
        tf.io.decode_jpeg(jpeg, channels=3).numpy(),
        png_pixels,
        np.repeat(tf.io.decode_jpeg(gray, channels=1).numpy(), 3, axis=-1),
    ]
    expected = np.concatenate([_keras_probabilities(keras_model, r[None]) for r in references])
    probabilities = out["probabilities"].numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, classes.NUM_CLASSES)
    _assert_relative_close(probabilities, expected, "serving_default vs Keras")
    index = out["class_index"].numpy()
    np.testing.assert_array_equal(index, expected.argmax(axis=1))
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [classes.CLASS_NAMES[i] for i in index]


def test_signatures_as_documented(exported):
    module = tf.saved_model.load(exported)
    assert set(module.signatures.keys()) == {"serving_default", "predict_images"}
    expected_inputs = {
        "serving_default": {"image_bytes": ([None], tf.string)},
        "predict_images": {"images": ([None, None, None, 3], tf.uint8)},
    }
    expected_outputs = {
        "probabilities": ([None, classes.NUM_CLASSES], tf.float32),
        "class_index": ([None], tf.int32),
        "class_name": ([None], tf.string),
    }
    for name, inputs in expected_inputs.items():
        signature = module.signatures[name]
        args, kwargs = signature.structured_input_signature
        assert args == ()
        got = {k: (spec.shape.as_list(), spec.dtype) for k, spec in kwargs.items()}
        assert got == inputs, name
        outputs = {k: (s.shape.as_list(), s.dtype) for k, s in signature.structured_outputs.items()}
        assert outputs == expected_outputs, name
    metadata = json.loads((pathlib.Path(exported) / export.METADATA_FILE).read_text())
    assert metadata["class_names"] == list(classes.CLASS_NAMES)
    assert metadata["model_input_size"] == model_lib.BACKBONES["tiny"].input_size
    assert metadata["decode_size"] == DECODE_SIZE


def test_malformed_bytes_raise_then_valid_call_works(loaded, faces_dir):
    jpeg = (faces_dir / "fer_justin.jpg").read_bytes()
    bad_requests = {
        "garbage": [b"not an image"],
        "empty": [b""],
        "truncated JPEG": [jpeg[: len(jpeg) // 3]],
        "PNG header, garbage body": [b"\x89PNG\r\n\x1a\n" + b"\x00" * 64],
        "one bad among good": [jpeg, b"garbage"],
    }
    for what, request in bad_requests.items():
        with pytest.raises(tf.errors.InvalidArgumentError):
            loaded.serving_default(image_bytes=tf.constant(request))
            pytest.fail(f"{what}: no error")
    out = loaded.serving_default(image_bytes=tf.constant([jpeg, jpeg]))
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (2, classes.NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    # The same image at two batch positions: equal up to float32 rounding (CPU kernels may
    # sum in a different order per batch row; observed 9e-7 relative on AVX2), which still
    # catches any state left over from the failed requests.
    np.testing.assert_allclose(probabilities[0], probabilities[1], rtol=1e-5, atol=1e-8)


def test_empty_batch_gives_empty_outputs(loaded):
    for out in (
        loaded.serving_default(image_bytes=tf.constant([], tf.string)),
        loaded.predict_images(images=tf.zeros([0, 32, 32, 3], tf.uint8)),
    ):
        assert out["probabilities"].shape == (0, classes.NUM_CLASSES)
        assert out["class_index"].shape == (0,) and out["class_name"].shape == (0,)


def test_resolve_model_path(trained, exported, tmp_path):
    _, path = trained
    assert export.resolve_model_path(path.parent) == str(path)  # training workdir
    assert export.resolve_model_path(path) == str(path)
    with pytest.raises(FileNotFoundError, match="best_model.keras"):
        export.resolve_model_path(tmp_path)  # a workdir before its first validation
    with pytest.raises(FileNotFoundError, match="training workdir"):
        export.resolve_model_path(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="already an exported SavedModel"):
        export.resolve_model_path(exported)
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"not a \.keras file"):
        export.resolve_model_path(tmp_path / "weights.h5")
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        export.load_exported(tmp_path)


def test_existing_export_kept_unless_overwrite(trained, tmp_path):
    keras_model, path = trained
    export_dir = tmp_path / "fer" / "1"
    export_dir.mkdir(parents=True)
    (export_dir / "keep.txt").write_text("previous version")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export(path, export_dir)
    assert os.listdir(export_dir) == ["keep.txt"]

    export.export_saved_model(keras_model, export_dir, overwrite=True)
    assert not (export_dir / "keep.txt").exists()
    assert (export_dir / "saved_model.pb").is_file()
    # Nothing left beside the version folder: TF Serving would see only "1".
    assert os.listdir(export_dir.parent) == ["1"]
    umask = os.umask(0)
    os.umask(umask)
    # mkdtemp's 0700 would hide the export from a server running as another user.
    assert export_dir.stat().st_mode & 0o777 == 0o777 & ~umask


def test_export_folder_holding_the_model_is_refused_even_with_overwrite(trained, tmp_path):
    keras_model, path = trained
    workdir = tmp_path / "run"
    workdir.mkdir()
    model_file = workdir / "best_model.keras"
    model_file.write_bytes(path.read_bytes())
    for export_dir in (workdir, tmp_path):
        with pytest.raises(ValueError, match="holds the model being exported"):
            export.export(model_file, export_dir, overwrite=True)
    assert model_file.read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match="holds the model being exported"):
        export.export_saved_model(keras_model, workdir, overwrite=True, source=str(model_file))
    assert sorted(os.listdir(workdir)) == ["best_model.keras"]


def _export_cli(*argv):
    return subprocess.run([sys.executable, "-m", "fer_tf.export", *argv], cwd=REPO_ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
                          text=True, timeout=300)


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("fer_tf.export: error:")]


def test_cli_errors_are_clear(trained, tmp_path):
    _, path = trained
    missing = tmp_path / "no_such_run"
    proc = _export_cli(f"--model={missing}", f"--export_dir={tmp_path / '1'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (error,) = _error_lines(proc)
    assert str(missing) in error and "best_model.keras" in error
    assert not (tmp_path / "1").exists()

    existing = tmp_path / "serving" / "1"
    existing.mkdir(parents=True)
    (existing / "saved_model.pb").write_bytes(b"old")
    proc = _export_cli(f"--model={path}", f"--export_dir={existing}")
    assert proc.returncode == 2
    (error,) = _error_lines(proc)
    assert "--overwrite" in error
    assert (existing / "saved_model.pb").read_bytes() == b"old"


@pytest.mark.slow
def test_cli_subprocess_exports(trained, tmp_path):
    keras_model, path = trained
    export_dir = tmp_path / "fer" / "1"
    result = subprocess.run(
        [sys.executable, "-m", "fer_tf.export", f"--model={path.parent}",
         f"--export_dir={export_dir}"],
        cwd=REPO_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(export_dir)
    images = np.random.default_rng(1).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    out = export.load_exported(export_dir).predict_images(images=tf.constant(images))
    _assert_relative_close(out["probabilities"].numpy(), _keras_probabilities(keras_model, images),
                           "CLI export vs Keras")


def test_decode_size_comes_from_the_training_flagfile(trained, tmp_path):
    keras_model, _ = trained
    workdir = tmp_path / "run"
    workdir.mkdir()
    keras_model.save(workdir / model_lib.BEST_MODEL_FILE)
    (workdir / "flags.txt").write_text("--backbone=tiny\n--image_size=48\n")
    out = export.export(workdir, tmp_path / "serving" / "1")
    metadata = json.loads((pathlib.Path(out) / export.METADATA_FILE).read_text())
    assert metadata["decode_size"] == 48
    images = np.random.default_rng(5).integers(0, 256, (2, 100, 90, 3), dtype=np.uint8)
    served = export.load_exported(out).predict_images(images=tf.constant(images))["probabilities"]
    shrunk = np.stack([pipeline.resize_uint8(tf.constant(i), 48).numpy() for i in images])
    expected = tf.nn.softmax(keras_model(shrunk.astype(np.float32)), axis=-1).numpy()
    _assert_relative_close(served.numpy(), expected, "predict_images at decode size 48")


def test_serving_refuses_an_image_over_the_pixel_limit(loaded, faces_dir, huge_png):
    huge = huge_png.read_bytes()
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 100000000 pixels"):
        loaded.serving_default(image_bytes=tf.constant([huge]))
    jpeg = (faces_dir / "fer_justin.jpg").read_bytes()
    assert loaded.serving_default(image_bytes=tf.constant([jpeg]))["probabilities"].shape == (1, 7)
