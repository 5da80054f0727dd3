"""load_classifier: .keras file, training workdir, SavedModel; batched probabilities.

The comparisons with the Keras model's own float32 outputs load with precision="float32":
on CPUs with native bfloat16 the default ("auto") computes the backbone in bfloat16
(tests/test_compute_precision.py checks that path)."""


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
    classifier = inference.load_classifier(path, batch_size=3, precision="float32")
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
    # The run's flagfile (as fer_tf.train writes it) gives the decode size.
    (tmp_path / "flags.txt").write_text("# relaunch\n--workdir=/x\n--image_size=96\n")
    classifier = inference.load_classifier(tmp_path, precision="float32")
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


def test_a_copied_model_file_keeps_its_contract_and_probabilities(contract_model_file, tmp_path):
    import shutil  # pylint: disable=import-outside-toplevel

    path, _ = contract_model_file
    copy = tmp_path / "elsewhere" / "copy.keras"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    original, copied = inference.load_classifier(path), inference.load_classifier(copy)
    for classifier in (original, copied):
        assert classifier.input_size == 48 and classifier.crop_margin == 0.0
        assert classifier.class_names == ("Neutral", "Anger", "Disgust", "Fear", "Happiness",
                                          "Sadness", "Surprise")
    images = _images(5, size=48)
    np.testing.assert_array_equal(original.predict_probabilities(images),
                                  copied.predict_probabilities(images))
    # An explicit input_size still wins over the file's.
    assert inference.load_classifier(copy, input_size=64).input_size == 64


def test_flip_average_is_the_mean_of_image_and_mirror(contract_model_file):
    path, model = contract_model_file
    images = _images(4, size=48, seed=3)
    averaged = inference.load_classifier(path, flip_average=True,
                                      precision="float32").predict_probabilities(images)
    expected = (_reference(model, images) + _reference(model, images[:, :, ::-1])) / 2
    np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-6)
    plain = inference.load_classifier(path).predict_probabilities(images)
    assert np.abs(plain - averaged).max() > 1e-6


def test_freeze_bakes_the_variables_in():
    scale = tf.Variable([2.0, 3.0])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def scaled(x):
        return x * scale

    frozen = inference.freeze(scaled)
    x = tf.constant([[1.0, 1.0], [0.5, -1.0]])
    np.testing.assert_array_equal(frozen(x).numpy(), scaled(x).numpy())
    scale.assign([10.0, 10.0])  # the frozen copy keeps the values it was frozen with
    np.testing.assert_array_equal(frozen(x).numpy(), [[2.0, 3.0], [1.0, -3.0]])


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_loaded_keras_model_runs_frozen_with_batch_norm_folded(tiny_model_file, precision):
    # What inference runs: no variable reads (frozen: oneDNN caches reordered weights)
    # and no batch norm left (folded into the convolutions), in either precision.
    path, model = tiny_model_file
    assert any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in model._flatten_layers())
    classifier = inference.load_classifier(path, precision=precision)
    op_types = {op.type for op in classifier._fn.graph.get_operations()}
    assert "Conv2D" in op_types or "_FusedConv2D" in op_types
    assert not op_types & {"ReadVariableOp", "VarHandleOp", "ResourceGather"}
    assert not any("BatchNorm" in op_type for op_type in op_types)


def test_batch_buckets_are_powers_of_two_up_to_the_batch_size():
    assert [inference.batch_bucket(n, 48) for n in (0, 1, 2, 3, 5, 16, 17, 33, 48)] == \
        [1, 1, 2, 4, 8, 16, 32, 48, 48]


def _recording(classifier):
    """The batch sizes `classifier`'s model function is called with, as they happen."""
    seen, run = [], classifier._fn

    def recording(images):
        seen.append(int(images.shape[0]))
        return run(images)
    classifier._fn = recording
    return seen, run


def test_bfloat16_sees_only_bucket_batches_and_padding_changes_nothing(tiny_model_file):
    # bfloat16's XLA-fused block tails compile once per batch shape: pad to buckets.
    path, _ = tiny_model_file
    classifier = inference.load_classifier(path, batch_size=8, precision="bfloat16")
    seen, run = _recording(classifier)
    images = _images(13, size=40, seed=4)
    probs = classifier.predict_probabilities(images)  # chunks of 8 and 5
    assert seen == [8, 8] and probs.shape == (13, 7)
    unpadded = np.asarray(run(tf.constant(images[8:])))
    # The same rows computed without the blank padding: equal up to float rounding.
    np.testing.assert_allclose(probs[8:], unpadded, rtol=1e-5, atol=1e-6)
    classifier.predict_probabilities(images[:3])
    assert seen[-1] == 4


def test_float32_runs_each_chunk_as_it_comes(tiny_model_file):
    # No XLA parts in float32, so nothing to pad for: a batch of 3 costs 3 images.
    path, model = tiny_model_file
    classifier = inference.load_classifier(path, batch_size=8, precision="float32")
    seen, _ = _recording(classifier)
    images = _images(13, size=40, seed=4)
    probs = classifier.predict_probabilities(images)
    assert seen == [8, 5] and probs.shape == (13, 7)
    np.testing.assert_allclose(probs, _reference(model, images), rtol=1e-5, atol=1e-6)
    classifier.predict_probabilities(images[:3])
    assert seen[-1] == 3


def test_unknown_shipped_name_is_a_plain_path_error():
    with pytest.raises(FileNotFoundError, match="shipped model name"):
        inference.load_classifier("fer2014")
