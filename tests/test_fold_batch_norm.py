"""fold_batch_norms: Conv2D -> BatchNormalization folded for inference, same outputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from fer_tf import fold_batch_norm
from fer_tf import model as model_lib


def _randomise_batch_norms(model, rng):
    """Statistics and affine parameters far from the identity a fresh layer has."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomise_batch_norms(layer, rng)
        elif isinstance(layer, layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, shape).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.5, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, shape).astype("float32"))


def _batch_norm_count(model):
    return sum(_batch_norm_count(layer) if isinstance(layer, keras.Model)
               else isinstance(layer, layers.BatchNormalization) for layer in model.layers)


def test_folded_expression_model_matches_and_keeps_no_batch_norm():
    keras.utils.set_random_seed(5)
    model = model_lib.build_expression_model("fer48_w16", grayscale=True, decode_size=48)
    _randomise_batch_norms(model, np.random.default_rng(0))
    images = np.random.default_rng(1).integers(0, 256, (6, 48, 48, 3)).astype("float32")
    folded = fold_batch_norm.fold_batch_norms(model)
    # Every BatchNorm of the SE-ResNet follows a conv read by nothing else: all fold.
    assert fold_batch_norm.count_folds(folded) == _batch_norm_count(model) == 17  # stem + 4 x (3 + shortcut)
    assert _batch_norm_count(folded) == 0
    expected = model(images, training=False).numpy()
    # Float32 rounding of a reordered product (tolerance 1e-5 relative to the logit scale).
    np.testing.assert_allclose(folded(images, training=False).numpy(), expected,
                               rtol=0, atol=1e-5 * np.abs(expected).max())
    # The input contract travels with the preprocessing layer.
    assert model_lib.input_contract(folded) == model_lib.input_contract(model)


def _conv_read_by_two_layers(inputs):
    conv = layers.Conv2D(4, 3, padding="same", use_bias=True, name="conv")(inputs)
    normed = layers.BatchNormalization(name="bn")(conv)
    return layers.Add(name="add")([normed, conv])  # the raw conv output is used too


def _conv_with_its_own_activation(inputs):
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    return layers.BatchNormalization(name="bn")(x)  # relu in between: not affine


@pytest.mark.parametrize("build", [_conv_read_by_two_layers, _conv_with_its_own_activation])
def test_unsafe_pairs_are_not_folded(build):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, build(inputs))
    _randomise_batch_norms(model, np.random.default_rng(2))
    folded = fold_batch_norm.fold_batch_norms(model)
    assert fold_batch_norm.count_folds(folded) == 0
    x = tf.random.stateless_normal((2, 8, 8, 3), seed=(1, 2))
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), rtol=1e-6, atol=1e-6)


def test_conv_bias_and_batch_norm_without_scale_fold_exactly():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(5, 3, use_bias=True, bias_initializer="random_normal", name="conv")(inputs)
    outputs = layers.BatchNormalization(scale=False, name="bn")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    rng = np.random.default_rng(3)
    bn.beta.assign(rng.normal(0, 1, 5).astype("float32"))
    bn.moving_mean.assign(rng.normal(0, 1, 5).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.1, 2, 5).astype("float32"))
    folded = fold_batch_norm.fold_batch_norms(model)
    assert fold_batch_norm.count_folds(folded) == 1
    x = tf.random.stateless_normal((2, 8, 8, 3), seed=(3, 4))
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
