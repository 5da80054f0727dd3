"""Class weights for the weighted cross-entropy: the paper's count(max)/count(c).

The paper (Aff-Wild2 train + ExpW, 1,004,523 faces) used
(1, 22.92, 37.5, 50.66, 3.47, 5.79, 13.55) for (Neutral, Anger, Disgust, Fear,
Happiness, Sadness, Surprise). The weights are applied per example (see
``example_weights``) so the loss can divide by the sum of the targets' weights
as PyTorch's CrossEntropyLoss(weight=w) does.
"""

import numpy as np

# docs/datasets.md: the paper's weights, ABAW class order.
PAPER_CLASS_WEIGHTS = (1.0, 22.92, 37.5, 50.66, 3.47, 5.79, 13.55)


def paper_class_weights(counts, class_names=None) -> np.ndarray:
    """count(majority class) / count(c) for every class.

    A class with no training example cannot get a finite weight; rather than a
    silent 0 (the class would then never be learned, and its F1 would quietly
    be 0), this raises and says which class is missing.

    Args:
      counts: per-class example counts (sequence or array of non-negative ints).
      class_names: optional names, used in error messages.

    Returns:
      float64 array of weights, 1.0 for the largest class.

    Raises:
      ValueError: if counts is empty, negative, or a class has no examples.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.size == 0:
        raise ValueError("paper_class_weights needs at least one class count")
    if (counts < 0).any():
        raise ValueError(f"class counts must be non-negative, got {counts.tolist()}")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        names = [class_names[i] if class_names else str(i) for i in empty]
        raise ValueError(
            f"classes {names} have no training examples, so count(max)/count(c) is undefined; "
            "add data for them or pass explicit class weights (e.g. --class_weights=1,22.92,...)")
    return counts.max() / counts


def parse_class_weights(text: str, num_classes: int = None) -> np.ndarray:
    """Parses "1,22.92,37.5,..." (comma and/or space separated) into a float64 array.

    Raises:
      ValueError: on a non-number, a non-positive or non-finite weight, or a
        count different from ``num_classes``.
    """
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        weights = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        raise ValueError(f"class weights {text!r}: expected comma-separated numbers, "
                         "e.g. '1,22.92,37.5,50.66,3.47,5.79,13.55'") from None
    if weights.size == 0:
        raise ValueError("class weights: empty string; expected one number per class")
    if num_classes is not None and weights.size != num_classes:
        raise ValueError(f"class weights {text!r}: got {weights.size} values, "
                         f"expected {num_classes} (one per class)")
    if not np.isfinite(weights).all() or (weights <= 0).any():
        raise ValueError(f"class weights {text!r}: every weight must be a positive finite number")
    return weights


def example_weights(labels, class_weights=None) -> np.ndarray:
    """Per-example float32 weights: class_weights[label], or 1 where no weights are given.

    Raises:
      ValueError: if a label is outside [0, len(class_weights)).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if class_weights is None:
        return np.ones(labels.shape, np.float32)
    class_weights = np.asarray(class_weights, dtype=np.float32).reshape(-1)
    bad = (labels < 0) | (labels >= class_weights.size)
    if bad.any():
        raise ValueError(f"labels {np.unique(labels[bad]).tolist()} outside the "
                         f"{class_weights.size} classes of the class weights")
    return class_weights[labels]
