"""The ABAW expression score: 0.67 * macro F1 + 0.33 * accuracy.

Two forms with one definition (docs/evaluation.md):
- numpy functions (`confusion_matrix`, `scores_from_confusion`, `abaw_score`) for
  evaluation scripts and tests;
- `AbawScore`, a streaming Keras metric that accumulates a confusion matrix, so the
  score is exact over any number of batches and under `tf.distribute` (the matrix is
  a sum-aggregated, on-read-synchronised variable, like every Keras metric variable).

Convention (the same everywhere in fer_tf, equal to scikit-learn's
`f1_score(average="macro", labels=range(num_classes), zero_division=0)`):
macro F1 is the unweighted mean over **all** `num_classes` classes; a class's F1 is
2*TP / (2*TP + FP + FN), and a class absent from both the labels and the predictions
(denominator 0) has F1 = 0. It therefore still counts in the mean and lowers it.
Accuracy is the (weighted) fraction of correct predictions over everything seen.
"""

from typing import Dict, List, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from fer_tf.classes import NUM_CLASSES

# The ABAW 2020/2021 expression-track weights (docs/evaluation.md).
F1_WEIGHT = 0.67
ACCURACY_WEIGHT = 0.33


def confusion_matrix(
    labels: Sequence[int],
    preds: Sequence[int],
    num_classes: int = NUM_CLASSES,
    sample_weight: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Counts (or sums of weights) of label i predicted as j.

    Args:
      labels: true class indices, shape [N], values in [0, num_classes).
      preds: predicted class indices, shape [N], values in [0, num_classes).
      num_classes: size of the matrix.
      sample_weight: optional per-example weights, shape [N].

    Returns:
      float64 array [num_classes, num_classes]; rows are true classes, columns
      predictions (the same layout as sklearn.metrics.confusion_matrix).

    Raises:
      ValueError: shapes differ or a value lies outside [0, num_classes).
    """
    labels = np.asarray(labels).reshape(-1)
    preds = np.asarray(preds).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(
            f"labels and preds must have the same length, got {labels.shape[0]} and {preds.shape[0]}"
        )
    for name, values in (("labels", labels), ("preds", preds)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got min {values.min()} max {values.max()}; "
                "drop unannotated (-1) frames before scoring"
            )
    if sample_weight is None:
        weights = np.ones(labels.shape[0], np.float64)
    else:
        weights = np.asarray(sample_weight, np.float64).reshape(-1)
        if weights.shape != labels.shape:
            raise ValueError(
                f"sample_weight must have one weight per label ({labels.shape[0]}), got {weights.shape[0]}"
            )
    cm = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(cm, (labels.astype(np.int64), preds.astype(np.int64)), weights)
    return cm


def scores_from_confusion(cm: np.ndarray) -> Dict[str, Union[float, List[float]]]:
    """ABAW score, macro F1, accuracy and per-class F1 from a confusion matrix.

    Args:
      cm: [C, C] array, rows true classes, columns predictions.

    Returns:
      dict with keys "abaw_score", "f1", "accuracy" (floats) and "per_class_f1"
      (list of C floats). Empty matrix -> all zeros. Convention: see the module
      docstring (sklearn zero_division=0, mean over all C classes).
    """
    cm = np.asarray(cm, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    tp = np.diag(cm)
    # 2TP + FP + FN = (row sum) + (column sum).
    denominator = cm.sum(axis=1) + cm.sum(axis=0)
    per_class = np.divide(2.0 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    total = cm.sum()
    accuracy = float(tp.sum() / total) if total > 0 else 0.0
    f1 = float(per_class.mean())
    return {
        "abaw_score": F1_WEIGHT * f1 + ACCURACY_WEIGHT * accuracy,
        "f1": f1,
        "accuracy": accuracy,
        "per_class_f1": [float(v) for v in per_class],
    }


def abaw_score(
    labels: Sequence[int],
    preds: Sequence[int],
    num_classes: int = NUM_CLASSES,
    sample_weight: Optional[Sequence[float]] = None,
) -> Dict[str, Union[float, List[float]]]:
    """ABAW expression score of predicted class indices against labels.

    Args:
      labels: true class indices [N] (drop -1 / unannotated frames first).
      preds: predicted class indices [N].
      num_classes: number of classes the macro F1 averages over (7 for ABAW 2020/21).
      sample_weight: optional per-example weights [N].

    Returns:
      dict(abaw_score, f1, accuracy, per_class_f1); see `scores_from_confusion`.
    """
    return scores_from_confusion(confusion_matrix(labels, preds, num_classes, sample_weight))


@keras.saving.register_keras_serializable(package="fer_tf")
class AbawScore(keras.metrics.Metric):
    """Streaming ABAW score (0.67 * macro F1 + 0.33 * accuracy) from a confusion matrix.

    `update_state(y_true, y_pred, sample_weight=None)`:
      y_true: int class indices [B] (or [B, 1]). Negative labels (Aff-Wild2's -1,
        "not annotated") are ignored.
      y_pred: logits or probabilities [B, C] (argmax is taken) or int class
        indices [B].
      sample_weight: optional weights [B]; they weight the confusion-matrix cells,
        so accuracy and F1 become weighted as in sklearn's sample_weight.

    `result()` is the scalar ABAW score; `f1()`, `accuracy()`, `per_class_f1()` and
    `confusion_matrix()` give the parts as tensors, `scores()` (eager) as a dict of
    Python floats. The convention for absent
    classes is sklearn's zero_division=0 over all `num_classes` (module docstring).
    The state is one float64 [C, C] variable, summed across replicas under
    tf.distribute (float64 keeps counts exact far beyond Aff-Wild2's 1e6 frames).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, name: str = "abaw_score", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="float64",
            aggregation="sum",
            name="confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        c = self.num_classes
        y_true = tf.reshape(tf.cast(y_true, tf.int64), [-1])
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank is not None and y_pred.shape.rank >= 2 and y_pred.shape[-1] != 1:
            y_pred = tf.argmax(tf.reshape(y_pred, [-1, c]), axis=-1)
        y_pred = tf.reshape(tf.cast(y_pred, tf.int64), [-1])
        if sample_weight is None:
            weights = tf.ones_like(y_true, tf.float64)
        else:
            weights = tf.reshape(tf.cast(sample_weight, tf.float64), [-1])
        # Unannotated frames (label < 0) contribute nothing.
        valid = y_true >= 0
        weights = tf.where(valid, weights, tf.zeros_like(weights))
        y_true = tf.where(valid, y_true, tf.zeros_like(y_true))
        checks = [
            tf.debugging.assert_less(y_true, tf.constant(c, tf.int64), message="label >= num_classes"),
            tf.debugging.assert_non_negative(y_pred, message="negative prediction"),
            tf.debugging.assert_less(y_pred, tf.constant(c, tf.int64), message="prediction >= num_classes"),
        ]
        with tf.control_dependencies(checks):
            cells = y_true * c + y_pred
        counts = tf.math.unsorted_segment_sum(weights, cells, c * c)
        self.matrix.assign_add(tf.reshape(counts, [c, c]))

    def _scores(self):
        cm = tf.convert_to_tensor(self.matrix)
        tp = tf.linalg.diag_part(cm)
        denominator = tf.reduce_sum(cm, axis=0) + tf.reduce_sum(cm, axis=1)
        per_class = tf.math.divide_no_nan(2.0 * tp, denominator)
        accuracy = tf.math.divide_no_nan(tf.reduce_sum(tp), tf.reduce_sum(cm))
        return per_class, tf.reduce_mean(per_class), accuracy

    def result(self):
        _, f1, accuracy = self._scores()
        return tf.cast(F1_WEIGHT * f1 + ACCURACY_WEIGHT * accuracy, tf.float32)

    def f1(self):
        """Macro F1 over all classes (float32 scalar)."""
        return tf.cast(self._scores()[1], tf.float32)

    def accuracy(self):
        """Weighted fraction of correct predictions (float32 scalar)."""
        return tf.cast(self._scores()[2], tf.float32)

    def per_class_f1(self):
        """F1 of each class, float32 [num_classes]."""
        return tf.cast(self._scores()[0], tf.float32)

    def confusion_matrix(self):
        """The accumulated matrix, float64 [num_classes, num_classes] (rows: labels)."""
        return tf.convert_to_tensor(self.matrix)

    def scores(self) -> Dict[str, Union[float, List[float]]]:
        """Eager-only: dict(abaw_score, f1, accuracy, per_class_f1) as Python floats.

        For logs and result files; computed in float64 by `scores_from_confusion`.
        """
        return scores_from_confusion(np.asarray(self.confusion_matrix()))

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.num_classes}
