"""ABAW expression-track test-set files: one per video, a header and one label per frame.

Format (docs/evaluation.md, "ABAW test-set files"): line 1 is the comma-joined class names
(`Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise`), then exactly one integer
per frame of the raw video, in frame order, for every frame, including frames without
a face. -1 is never written: frames without a face are filled from their neighbours
first (`labels_from_probabilities`).
"""

import os
import pathlib
from typing import Sequence, Union

import numpy as np

from fer_tf import atomic, temporal
from fer_tf.classes import CLASS_NAMES


def labels_from_probabilities(
    probs: np.ndarray, present: Sequence[bool], smooth_window: int = 1, mode: str = "mean",
) -> np.ndarray:
    """Per-frame labels for every frame of a video, gaps filled from neighbours.

    Args:
      probs: [T, C] class probabilities for all T frames of the video (rows of
        frames without a face are ignored and may be NaN).
      present: [T] True where a face was classified.
      smooth_window: optional odd moving-average window applied after filling
        (1 = no smoothing).
      mode: "mean" or "median" smoothing.

    Returns:
      int64 [T] class indices, never negative. A video with no face at all gets
      class 0 (Neutral) for every frame (uniform probabilities; see
      `temporal.fill_missing`).
    """
    filled = temporal.smooth_video_predictions(probs, present, smooth_window, mode)
    return np.argmax(filled, axis=1).astype(np.int64)


def write_abaw_submission(
    path: Union[str, os.PathLike],
    labels_per_frame: Sequence[int],
    class_names: Sequence[str] = CLASS_NAMES,
) -> pathlib.Path:
    """Writes one video's ABAW prediction file atomically (temp file + os.replace).

    Args:
      path: output file, conventionally `<video name>.txt` (keep `_left`/`_right`).
      labels_per_frame: one class index per frame of the raw video, in frame order.
      class_names: the header's class names, in label order.

    Returns:
      The path written.

    Raises:
      ValueError: a label is negative (fill gaps first), not below len(class_names),
        or not an integer; or the video has no frames.
    """
    path = pathlib.Path(path)
    labels = np.asarray(labels_per_frame).reshape(-1)
    if labels.size == 0:
        raise ValueError(f"{path}: no frames to write; the video must have at least one frame")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(f"{path}: labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        first = int(np.flatnonzero(labels < 0)[0])
        raise ValueError(
            f"{path}: frame {first} has label {int(labels[first])}; ABAW files never contain "
            "negative labels: fill frames without a face from their neighbours first "
            "(labels_from_probabilities)"
        )
    if labels.max() >= len(class_names):
        raise ValueError(
            f"{path}: label {int(labels.max())} is not below the {len(class_names)} classes {list(class_names)}"
        )
    text = ",".join(class_names) + "\n" + "".join(f"{int(v)}\n" for v in labels)
    atomic.write_text(path, text)
    return path
