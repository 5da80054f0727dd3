"""Class-weighted cross-entropy with PyTorch's reduction.

The paper trains with ``torch.nn.CrossEntropyLoss(weight=w)``, whose mean divides the
sum of weighted per-example losses by the *sum of the targets' weights*, not by the
batch size (Keras' default reduction, which is 17.5x off with the paper's weights and
varies with the class mix of each batch; docs/training_recipe.md).

With gradient accumulation and several replicas the denominator must be the weight sum
of the *whole* 256-image batch, so the pieces are exposed separately:
``weighted_cross_entropy_sum`` gives the numerator of one micro-batch, the caller divides
by the global weight sum.
"""

import tensorflow as tf


def loss_dtype(logits):
    """float32, or float64 for float64 logits: the dtype losses are computed in."""
    # At least float32; float64 stays float64 (exactness tests against PyTorch).
    return tf.float64 if logits.dtype == tf.float64 else tf.float32


def per_example_cross_entropy(labels, logits, label_smoothing: float = 0.0) -> tf.Tensor:
    """Unweighted cross-entropy of each example, from logits, in float32.

    With ``label_smoothing`` e the target is (1 - e) on the label plus e / C on every
    class (Szegedy et al. 2016; PyTorch's ``label_smoothing`` without class weights).

    Args:
      labels: int class indices, shape [B].
      logits: unnormalised scores, shape [B, C], any float dtype (float16/bfloat16 under
        mixed precision are upcast first: the softmax of low-precision logits loses digits).

    Returns:
      float32 tensor [B] (float64 for float64 logits).
    """
    logits = tf.convert_to_tensor(logits)
    logits = tf.cast(logits, loss_dtype(logits))
    labels = tf.cast(labels, tf.int32)
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    num_classes = tf.shape(logits)[-1]
    target = tf.one_hot(labels, num_classes, dtype=logits.dtype)
    smoothing = tf.cast(label_smoothing, logits.dtype)
    target = target * (1.0 - smoothing) + smoothing / tf.cast(num_classes, logits.dtype)
    return tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits)


def weighted_cross_entropy_sum(labels, logits, weights, label_smoothing: float = 0.0) -> tf.Tensor:
    """Sum over examples of ``weights_i * ce_i`` (float32 scalar), the loss numerator.

    With label smoothing each example's smoothed CE is scaled by its own weight (PyTorch
    instead weights the smoothing term of each class by that class's weight; the two
    agree for an unweighted loss).

    Args:
      labels: int class indices [B].
      logits: [B, C] logits.
      weights: per-example weights [B] (the weight of each example's target class;
        all ones for an unweighted loss).
    """
    ce = per_example_cross_entropy(labels, logits, label_smoothing)
    return tf.reduce_sum(tf.cast(weights, ce.dtype) * ce)


def weighted_cross_entropy(labels, logits, weights, label_smoothing: float = 0.0) -> tf.Tensor:
    """PyTorch ``CrossEntropyLoss(weight=w)`` reduction: sum(w_i ce_i) / sum(w_i).

    ``weights`` are per-example (``w[labels]`` for a class-weight vector ``w``).
    A batch whose weights sum to zero gives NaN, as in PyTorch.
    """
    numerator = weighted_cross_entropy_sum(labels, logits, weights, label_smoothing)
    return numerator / tf.reduce_sum(tf.cast(weights, numerator.dtype))
