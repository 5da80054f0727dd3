"""The record type every reader returns: labelled image files, nothing of TensorFlow."""

import dataclasses
from typing import Sequence

import numpy as np

from fer_tf import classes


@dataclasses.dataclass
class LabelledImages:
    """A list of labelled face images on disk.

    Attributes:
      paths: image file paths (str).
      labels: int64 array of class indices in ``class_names`` order.
      class_names: names of the label space (the 7 ABAW classes by default).
      videos: per-image video/subject id ('' for still-image datasets).
      frames: per-image 0-based frame index in its video (-1 for still images).
    """

    paths: list
    labels: np.ndarray
    class_names: Sequence[str] = classes.CLASS_NAMES
    videos: list = None
    frames: np.ndarray = None

    def __post_init__(self):
        self.paths = [str(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.paths)
        if self.labels.shape[0] != n:
            raise ValueError(f"{n} paths but {self.labels.shape[0]} labels")
        if self.videos is None:
            self.videos = [""] * n
        if self.frames is None:
            self.frames = np.full(n, -1, dtype=np.int64)
        self.frames = np.asarray(self.frames, dtype=np.int64).reshape(-1)
        if len(self.videos) != n or self.frames.shape[0] != n:
            raise ValueError("videos and frames must have one entry per path")
        self.class_names = tuple(self.class_names)

    def __len__(self):
        return len(self.paths)

    def class_counts(self) -> np.ndarray:
        """Number of images per class, in ``class_names`` order."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    def summary(self) -> str:
        """One line: total and per-class counts."""
        counts = self.class_counts()
        per_class = ", ".join(f"{n} {c}" for n, c in zip(self.class_names, counts))
        return f"{len(self)} images ({per_class})"


def subset(images: LabelledImages, indices) -> LabelledImages:
    """The examples at ``indices`` (in that order; a bool mask works too), every field kept."""
    indices = np.asarray(indices)
    if indices.dtype == bool:
        indices = np.flatnonzero(indices)
    indices = indices.astype(np.int64)
    return LabelledImages(
        paths=[images.paths[i] for i in indices], labels=images.labels[indices],
        class_names=images.class_names, videos=[images.videos[i] for i in indices],
        frames=images.frames[indices])


def merge(*sources: LabelledImages) -> LabelledImages:
    """Concatenates sources that share a label space (e.g. Aff-Wild2 train + ExpW)."""
    if not sources:
        raise ValueError("merge() needs at least one source")
    names = sources[0].class_names
    for s in sources[1:]:
        if s.class_names != names:
            raise ValueError(f"cannot merge label spaces {names} and {s.class_names}")
    return LabelledImages(
        paths=[p for s in sources for p in s.paths],
        labels=np.concatenate([s.labels for s in sources]),
        class_names=names,
        videos=[v for s in sources for v in s.videos],
        frames=np.concatenate([s.frames for s in sources]),
    )
