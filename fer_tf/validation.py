"""Scoring during training, and what it writes to TensorBoard.

`evaluate` gives the ABAW score, macro F1, accuracy, per-class F1 and confusion matrix
with a fresh `fer_tf.metrics.AbawScore` (never the training metrics).
"""

from typing import Callable, Dict, Sequence

import keras
import numpy as np
import tensorflow as tf

from fer_tf import metrics as fer_metrics
from fer_tf import plots


def make_predict_fn(model: keras.Model) -> Callable:
    """Compiled ``images -> predicted class ids (int32)`` in inference mode."""
    @tf.function
    def predict(images):
        return tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
    return predict


def evaluate(predict_fn: Callable, dataset, num_classes: int) -> Dict:
    """Scores a model on a dataset with a fresh `AbawScore` (not the training metrics).

    Args:
      predict_fn: from `make_predict_fn`.
      dataset: yields (images, labels, ...) batches.
      num_classes: classes the macro F1 averages over.

    Returns:
      dict(abaw_score, f1, accuracy, per_class_f1 (list), confusion_matrix (ndarray),
      num_images).
    """
    metric = fer_metrics.AbawScore(num_classes=num_classes, name="val_abaw_score")
    count = 0
    for batch in dataset:
        images, labels = batch[0], batch[1]
        metric.update_state(labels, predict_fn(images))
        count += int(labels.shape[0])
    cm = metric.confusion_matrix().numpy()
    scores = fer_metrics.scores_from_confusion(cm)
    scores["confusion_matrix"] = cm
    scores["num_images"] = count
    return scores


def per_class_table(scores: Dict, class_names: Sequence[str]) -> str:
    """A small text table of per-class F1 (and support) for the log."""
    cm = scores["confusion_matrix"]
    lines = [f"{'class':<12}{'F1':>8}{'support':>10}"]
    for name, f1, support in zip(class_names, scores["per_class_f1"], cm.sum(axis=1)):
        lines.append(f"{name:<12}{f1:>8.4f}{int(support):>10d}")
    lines.append(f"{'macro F1':<12}{scores['f1']:>8.4f}  accuracy {scores['accuracy']:.4f}"
                 f"  ABAW {scores['abaw_score']:.4f}")
    return "\n".join(lines)


def confusion_matrix_image(cm: np.ndarray, class_names: Sequence[str], title: str = "") -> np.ndarray:
    """The evaluation report's confusion-matrix figure as a uint8 RGB image [1, H, W, 3]."""
    png = plots.confusion_png(cm, class_names, title)
    return tf.image.decode_png(png, channels=3).numpy()[None]


def summary_scalar(tag: str, value, step: int):
    """Writes a TensorBoard scalar to the default writer."""
    tf.summary.scalar(tag, float(value), step=step)


def summary_image(tag: str, image: np.ndarray, step: int):
    """Writes one uint8 RGB image [H, W, 3] as a TensorBoard image summary."""
    tf.summary.image(tag, image[None], step=step)
