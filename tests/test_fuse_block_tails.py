"""fuse_block_tails: each SE block's Multiply -> Add -> ReLU becomes one XLA-compiled layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import compute_precision, fuse_block_tails, model as model_lib


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(5)
    return model_lib.build_expression_model("tiny")


def _blocks(model):
    return sum(isinstance(layer, keras.layers.Multiply)
               for nested in model.layers if isinstance(nested, keras.Model)
               for layer in nested.layers)


def _images(n=4, size=48):
    return tf.constant(np.random.default_rng(1).integers(0, 256, (n, size, size, 3)), tf.float32)


def test_every_block_tail_is_fused_and_outputs_are_unchanged(tiny_model):
    fused = fuse_block_tails.fuse_block_tails(tiny_model)
    assert _blocks(tiny_model) > 0
    assert fuse_block_tails.count_fused(fused) == _blocks(tiny_model)
    assert _blocks(fused) == 0
    images = _images()
    # float32: the same arithmetic up to XLA's fused rounding (tolerance 1e-5 relative).
    np.testing.assert_allclose(fused(images, training=False).numpy(),
                               tiny_model(images, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_the_fused_bfloat16_backbone_agrees_with_the_unfused_one(tiny_model):
    # XLA may skip the bfloat16 rounding of u * gate before the add: logits within 2e-2.
    in_bfloat16 = compute_precision.backbone_in_bfloat16(tiny_model)
    fused = fuse_block_tails.fuse_block_tails(in_bfloat16)
    assert fuse_block_tails.count_fused(fused) == _blocks(tiny_model)
    images = _images()
    expected = in_bfloat16(images, training=False).numpy().astype(np.float32)
    np.testing.assert_allclose(fused(images, training=False).numpy().astype(np.float32),
                               expected, rtol=2e-2, atol=2e-2)


def test_a_chain_with_another_reader_is_left_alone():
    # The add's output is read twice: fusing it would hide a value another layer needs.
    inputs = keras.Input((4, 4, 8))
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs)
    added = keras.layers.Add()([keras.layers.Multiply()([inputs, gate]), inputs])
    outputs = keras.layers.Concatenate()([keras.layers.ReLU()(added), added])
    inner = keras.Model(inputs, outputs)
    outer_in = keras.Input((4, 4, 8))
    outer = keras.Model(outer_in, inner(outer_in))
    assert fuse_block_tails.count_fused(fuse_block_tails.fuse_block_tails(outer)) == 0
