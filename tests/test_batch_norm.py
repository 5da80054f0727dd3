"""TorchBatchNorm against torch.nn.BatchNorm2d: outputs, gradients, running statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from fer_tf.batch_norm import TorchBatchNorm

CHANNELS = 6


def _pair(dtype, seed=0):
    """A TorchBatchNorm and a float64 BatchNorm2d with the same non-trivial state."""
    rng = np.random.default_rng(seed)
    state = [rng.uniform(0.5, 1.5, CHANNELS), rng.normal(0, 0.5, CHANNELS),
             rng.normal(0, 0.5, CHANNELS), rng.uniform(0.5, 2.0, CHANNELS)]
    ours = TorchBatchNorm(epsilon=1e-5, momentum=0.9, dtype=dtype)
    ours.build((None, 5, 4, CHANNELS))
    ours.set_weights(state)
    theirs = torch.nn.BatchNorm2d(CHANNELS, eps=1e-5, momentum=0.1).double().train()
    with torch.no_grad():
        for p, v in zip((theirs.weight, theirs.bias, theirs.running_mean, theirs.running_var), state):
            p.copy_(torch.tensor(v))
    return ours, theirs


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


# (Keras dtype policy, input dtype, relative tolerance). float32 takes the fused kernel,
# float64 the unfused path. Under mixed precision both sides get the same quantised
# input; the tolerance is the rounding of the float16 / bfloat16 output and gradient.
CASES = [("float32", "float32", 1e-6), ("float64", "float64", 1e-12),
         ("mixed_float16", "float16", 1e-3), ("mixed_bfloat16", "bfloat16", 8e-3)]


@pytest.mark.parametrize("policy,input_dtype,tolerance", CASES)
def test_training_step_equals_pytorch(policy, input_dtype, tolerance):
    """Training mode: output, input/gamma/beta gradients and the updated running mean and
    (unbiased) running variance equal BatchNorm2d's after three batches."""
    ours, theirs = _pair(policy)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x_tf = tf.cast(tf.constant(rng.normal(1.0, 2.0, size=(3, 5, 4, CHANNELS))), input_dtype)
        x = tf.cast(x_tf, tf.float64).numpy()
        upstream = rng.normal(size=x.shape)
        x_torch = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
        y_torch = theirs(x_torch)
        (y_torch * torch.tensor(upstream).permute(0, 3, 1, 2)).sum().backward()
        with tf.GradientTape() as tape:
            tape.watch(x_tf)
            y = ours(x_tf, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float64) * upstream)
        gx, gamma_grad, beta_grad = tape.gradient(loss, [x_tf] + ours.trainable_variables)
        assert y.dtype == ours.compute_dtype
        assert _rel(y, _nhwc(y_torch)) <= tolerance
        assert _rel(gx, _nhwc(x_torch.grad)) <= tolerance
        assert _rel(gamma_grad, theirs.weight.grad.numpy()) <= tolerance
        assert _rel(beta_grad, theirs.bias.grad.numpy()) <= tolerance
        theirs.zero_grad()
    # Statistics are computed and kept in float32 (float64 for the float64 layer), also
    # under mixed precision.
    stat_tolerance = 1e-12 if policy == "float64" else 1e-6
    assert _rel(ours.moving_mean.numpy(), theirs.running_mean.numpy()) <= stat_tolerance
    assert _rel(ours.moving_variance.numpy(), theirs.running_var.numpy()) <= stat_tolerance


def test_running_variance_is_unbiased_not_keras():
    """The point of the layer: Keras' own BatchNormalization averages the biased variance,
    which PyTorch does not; on 2 x 2 x 2 values per channel the two differ by 8/7."""
    x = np.random.default_rng(2).normal(size=(2, 2, 2, CHANNELS)).astype(np.float32)
    ours, _ = _pair("float32")
    keras_bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.0)
    keras_bn.build(x.shape)
    ours.momentum = 0.0  # moving statistics become this batch's
    ours(x, training=True)
    keras_bn(x, training=True)
    biased = x.reshape(-1, CHANNELS).var(axis=0)
    np.testing.assert_allclose(keras_bn.moving_variance.numpy(), biased, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), biased * 8 / 7, rtol=1e-5)


def test_inference_mode_uses_moving_statistics_and_fused_training_graph():
    """Inference equals BatchNorm2d.eval(); the training graph holds the fused kernel."""
    ours, theirs = _pair("float32")
    x = np.random.default_rng(3).normal(size=(2, 5, 4, CHANNELS))
    expected = _nhwc(theirs.eval()(torch.tensor(x).permute(0, 3, 1, 2)))
    assert _rel(ours(x.astype(np.float32), training=False), expected) <= 1e-6
    graph = tf.function(lambda t: ours(t, training=True)).get_concrete_function(
        tf.TensorSpec((None, 5, 4, CHANNELS), tf.float32)).graph
    assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}


def test_saved_model_file_round_trip(tmp_path):
    """A .keras file with TorchBatchNorm loads back (registered class) with its state."""
    inputs = keras.Input((5, 4, CHANNELS))
    model = keras.Model(inputs, TorchBatchNorm(name="bn")(inputs))
    x = np.random.default_rng(4).normal(size=(4, 5, 4, CHANNELS)).astype(np.float32)
    model(x, training=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("bn"), TorchBatchNorm)
    np.testing.assert_array_equal(loaded.get_layer("bn").moving_variance.numpy(),
                                  model.get_layer("bn").moving_variance.numpy())


def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="renorm"):
        TorchBatchNorm(renorm=True)
    layer = TorchBatchNorm()
    layer.build((None, 5, 4, CHANNELS))
    with pytest.raises(ValueError, match="mask"):
        layer(np.zeros((1, 5, 4, CHANNELS), np.float32), training=True,
              mask=np.ones((1, 5, 4), bool))
