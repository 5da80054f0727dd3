"""Class-weighted cross-entropy equals PyTorch's CrossEntropyLoss(weight=w)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from fer_tf.data.class_weights import paper_class_weights
from fer_tf import losses

# The paper's class weights are max_count/count_c; these are Aff-Wild2 + ExpW-like.
COUNTS = np.array([180000, 16000, 10300, 9000, 95000, 50000, 30000])


def _batch(seed, n=64, c=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n).astype(np.int64)
    return logits, labels


def _torch_loss(logits, labels, class_weights):
    fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_weights, dtype=torch.float64))
    return float(fn(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_ce_equals_torch(seed):
    logits, labels = _batch(seed)
    w = paper_class_weights(COUNTS)
    ours = float(losses.weighted_cross_entropy(labels, logits, w[labels]))
    expected = _torch_loss(logits, labels, w)
    # float32 computation vs a float64 reference: 1e-6 relative.
    assert abs(ours - expected) <= 1e-6 * abs(expected)


def test_sum_over_micro_batches_divided_by_global_weight_equals_full_batch():
    logits, labels = _batch(3, n=64)
    w = paper_class_weights(COUNTS)[labels]
    total = float(np.sum(w))
    pieces = sum(float(losses.weighted_cross_entropy_sum(labels[i:i + 16], logits[i:i + 16],
                                                         w[i:i + 16])) for i in range(0, 64, 16))
    full = float(losses.weighted_cross_entropy(labels, logits, w))
    assert abs(pieces / total - full) <= 1e-6 * full


def test_keras_default_reduction_is_not_pytorchs():
    """Regression guard: Keras' default reduction divides by the batch size."""
    logits, labels = _batch(4)
    w = paper_class_weights(COUNTS)
    expected = _torch_loss(logits, labels, w)
    keras_default = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, logits, sample_weight=w[labels]))
    # With the paper's weights the two differ by the mean weight of the batch (several x).
    ratio = keras_default / expected
    assert ratio == pytest.approx(np.mean(w[labels]), rel=1e-5)
    assert ratio > 2
    # Keras' "mean_with_sample_weight" reduction reproduces PyTorch.
    keras_pt = float(keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight")(labels, logits,
                                                              sample_weight=w[labels]))
    assert keras_pt == pytest.approx(expected, rel=1e-6)


def test_low_precision_logits_are_upcast():
    logits, labels = _batch(5)
    w = np.ones(len(labels), np.float32)
    loss16 = losses.weighted_cross_entropy(labels, tf.constant(logits, tf.bfloat16), w)
    assert loss16.dtype == tf.float32
    expected = _torch_loss(tf.cast(tf.constant(logits, tf.bfloat16), tf.float32).numpy(),
                           labels, np.ones(7))
    assert float(loss16) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_equals_torch(smoothing):
    logits, labels = _batch(4)
    ours = float(losses.weighted_cross_entropy(labels, logits, np.ones(len(labels)),
                                               label_smoothing=smoothing))
    fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    expected = float(fn(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels)))
    # float32 computation vs a float64 reference: 1e-6 relative.
    assert abs(ours - expected) <= 1e-6 * abs(expected)
    plain = float(losses.weighted_cross_entropy(labels, logits, np.ones(len(labels))))
    assert abs(ours - plain) > 1e-3
