"""The model shipped in the package: loads anywhere, carries its contract, labels real smiles."""

import os
import shutil
import socket

import keras
import numpy as np
import pytest

from fer_tf import inference, model as model_lib, predict, pretrained
from fer_tf.api import ExpressionRecognizer

# Smiling single-face photos (../shared/data/faces/README.md).
SMILING_SINGLE_FACES = ("pyfeat_single_face.jpg", "fer_justin.jpg")
MAX_SHIPPED_BYTES = 5 * 1024 * 1024


def _faces(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading the shipped model")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_fer2013_is_the_default(no_network):
    path = pretrained.shipped_path()
    assert pretrained.resolve(None) == path and pretrained.resolve("fer2013") == path
    assert "shipped model 'fer2013'" in pretrained.describe(None)
    classifier = inference.load_classifier(None)
    assert classifier.path == path
    contract = model_lib.input_contract(model_lib.load_expression_model(path))
    assert contract.decode_size == classifier.input_size == 48
    assert contract.grayscale and contract.crop_margin == 0.0
    assert contract.class_names == ("Neutral", "Anger", "Disgust", "Fear", "Happiness",
                                    "Sadness", "Surprise")


@pytest.mark.parametrize("name", sorted(pretrained.SHIPPED))
def test_every_shipped_file_is_small_and_carries_the_fer2013_contract(name, no_network):
    path = pretrained.shipped_path(name)
    assert os.path.getsize(path) <= MAX_SHIPPED_BYTES
    assert pretrained.resolve(name) == path
    assert f"shipped model {name!r}" in pretrained.describe(name)
    contract = model_lib.input_contract(model_lib.load_expression_model(path))
    assert contract.decode_size == 48 and contract.grayscale and contract.crop_margin == 0.0


@pytest.mark.parametrize("name", sorted(pretrained.SHIPPED))
def test_a_copy_elsewhere_gives_identical_probabilities(tmp_path, no_network, name):
    copy = tmp_path / "anywhere" / "model.keras"
    copy.parent.mkdir()
    shutil.copy(pretrained.shipped_path(name), copy)
    images = _faces()
    shipped = inference.load_classifier(name).predict_probabilities(images)
    copied = inference.load_classifier(str(copy))
    assert copied.input_size == 48 and copied.crop_margin == 0.0
    np.testing.assert_array_equal(shipped, copied.predict_probabilities(images))


def test_compact_save_rounds_only_kernels(tmp_path):
    model = model_lib.build_expression_model("fer48_w16", decode_size=48)
    pretrained.save_compact(model, tmp_path / "c.keras")
    model.save(tmp_path / "f.keras")
    assert os.path.getsize(tmp_path / "c.keras") < 0.6 * os.path.getsize(tmp_path / "f.keras")
    compact = model_lib.load_expression_model(tmp_path / "c.keras")
    for a, b in zip(model.weights, compact.weights):
        if len(a.shape) >= 2:  # float16 rounding: relative error <= 2**-11
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2**-11, atol=1e-7)
        else:
            np.testing.assert_array_equal(b.numpy(), a.numpy())
    assert model_lib.input_contract(compact).decode_size == 48


def test_a_model_trained_in_bfloat16_ships_computing_in_float32(tmp_path):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = model_lib.build_expression_model("tiny", decode_size=48)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("backbone").compute_dtype == "bfloat16"
    pretrained.save_compact(model, tmp_path / "c.keras")
    compact = model_lib.load_expression_model(tmp_path / "c.keras")
    assert {layer.compute_dtype for layer in compact.get_layer("backbone").layers} == {"float32"}
    images = _faces().astype("float32")
    # bfloat16 keeps 8 significant bits: its logits differ from float32's by about 1%.
    np.testing.assert_allclose(compact.predict(images, verbose=0),
                               model.predict(images, verbose=0), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", SMILING_SINGLE_FACES)
@pytest.mark.parametrize("model", [None] + sorted(set(pretrained.SHIPPED) - {pretrained.DEFAULT}))
def test_predict_labels_smiling_photos_happiness(faces_dir, name, model):
    """With no --model (the default) and with every other shipped model."""
    summary = predict.predict(model, str(faces_dir / name), progress=False)
    assert summary["num_faces"] == 1
    row = summary["rows"][0]
    assert summary["class_names"][row.label] == "Happiness", row.probabilities


def test_python_api_gives_box_emotions_and_label(faces_dir):
    recognizer = ExpressionRecognizer()
    found = recognizer.detect_emotions(str(faces_dir / "pyfeat_single_face.jpg"))
    assert len(found) == 1
    face = found[0]
    x, y, w, h = face["box"]
    assert w > 50 and h > 50 and face["score"] > 0.9
    assert sum(face["emotions"].values()) == pytest.approx(1.0, abs=1e-5)
    assert face["label"] == "Happiness" == max(face["emotions"], key=face["emotions"].get)
    assert recognizer.top_emotion(str(faces_dir / "fer_justin.jpg"))[0] == "Happiness"
