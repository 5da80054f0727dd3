"""load_classifier: .keras file, training workdir, SavedModel; batched probabilities."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import inference, model as model_lib


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = model_lib.build_expression_model("tiny")
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path, model


def _images(n, size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _reference(model, images):
    logits = model(tf.cast(images, tf.float32), training=False)
    return tf.nn.softmax(logits).numpy()


def test_keras_file_probabilities_match_model_and_are_batched(tiny_model_file):
    path, model = tiny_model_file
    classifier = inference.load_classifier(path, batch_size=3)
    assert classifier.kind == "keras" and classifier.input_size == inference.DEFAULT_INPUT_SIZE
    images = _images(7)
    probs = classifier.predict_probabilities(images)
    assert probs.shape == (7, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # 3 chunks (3 + 3 + 1) give what one call of the Keras model gives (tolerance 1e-5).
    np.testing.assert_allclose(probs, _reference(model, images), rtol=1e-5, atol=1e-6)
    assert classifier.predict_probabilities(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 7)


def test_workdir_reads_best_model_and_image_size(tiny_model_file, tmp_path):
    path, model = tiny_model_file
    (tmp_path / "best_model.keras").write_bytes(path.read_bytes())
    assert inference.load_classifier(tmp_path).input_size == 112
    (tmp_path / "config.json").write_text(json.dumps({"image_size": 96}))
    assert inference.load_classifier(tmp_path).input_size == 96
    # fer_tf.train's flagfile wins over JSON files.
    (tmp_path / "flags.txt").write_text("# relaunch\n--workdir=/x\n--image_size=80\n")
    assert inference.load_classifier(tmp_path).input_size == 80
    (tmp_path / "flags.txt").unlink()
    classifier = inference.load_classifier(tmp_path)
    assert classifier.input_size == 96 and classifier.path.endswith("best_model.keras")
    images = _images(2, size=96)
    np.testing.assert_allclose(classifier.predict_probabilities(images), _reference(model, images),
                               rtol=1e-5, atol=1e-6)


def test_saved_model_with_export_signature(tiny_model_file, tmp_path):
    """A SavedModel with fer_tf.export's `predict_images` contract, in a version folder."""
    _, model = tiny_model_file
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def predict_images(images):
        probs = tf.nn.softmax(module.model(tf.cast(images, tf.float32), training=False))
        return {"probabilities": probs, "class_index": tf.argmax(probs, axis=-1)}

    tf.saved_model.save(module, str(tmp_path / "export" / "1"),
                        signatures={"predict_images": predict_images})
    classifier = inference.load_classifier(tmp_path / "export", batch_size=4)
    assert classifier.kind == "saved_model" and classifier.path.endswith("1")
    images = _images(5)
    np.testing.assert_allclose(classifier.predict_probabilities(images), _reference(model, images),
                               rtol=1e-5, atol=1e-6)


def test_bad_paths_and_inputs(tiny_model_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        inference.load_classifier(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="best_model.keras"):
        inference.load_classifier(tmp_path)
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .keras file"):
        inference.load_classifier(tmp_path / "model.h5")
    classifier = inference.load_classifier(tiny_model_file[0])
    with pytest.raises(ValueError, match="uint8"):
        classifier.predict_probabilities(np.zeros((1, 8, 8, 3), np.float32))
