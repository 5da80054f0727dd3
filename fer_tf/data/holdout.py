"""Carving a validation split out of a training list (FER2013 has none of its own).

FER2013's PublicTest is the split results are reported on, so checkpoints and settings
must be chosen on images taken from ``train``. The carve is stratified by class (every
class keeps its share), seeded (the same images for the same seed on every machine), and
keeps byte-identical files together: FER2013 holds about 1,100 groups of identical
images, and a copy in each split would let validation reward memorisation.
"""

import hashlib

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fer_tf.data.examples import LabelledImages, subset

DEFAULT_FRACTION = 0.1
DEFAULT_SEED = 0


def content_groups(paths) -> np.ndarray:
    """One int per file: equal for files with identical bytes."""
    ids = {}
    groups = np.empty(len(paths), np.int64)
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            digest = hashlib.sha1(f.read()).digest()
        groups[i] = ids.setdefault(digest, len(ids))
    return groups


def split_indices(labels, groups, fraction: float = DEFAULT_FRACTION,
                  seed: int = DEFAULT_SEED):
    """(train indices, validation indices), sorted; stratified, groups never split.

    Args:
      labels: class index per example.
      groups: group id per example (`content_groups`); a group lands in one split.
      fraction: share of examples for validation, in (0, 0.5].
      seed: the carve's seed.

    Raises:
      ValueError: a fraction outside (0, 0.5].
    """
    if not 0 < fraction <= 0.5:
        raise ValueError(f"validation fraction must be in (0, 0.5], got {fraction}")
    folds = StratifiedGroupKFold(n_splits=round(1 / fraction), shuffle=True, random_state=seed)
    train, validation = next(folds.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train), np.sort(validation)


# (paths, labels, fraction, seed) -> split indices: a run reads both parts, and hashing
# the files twice would double the start-up cost. Keeps the last few lists only.
_SPLITS = {}


def carve(images: LabelledImages, part: str, fraction: float = DEFAULT_FRACTION,
          seed: int = DEFAULT_SEED) -> LabelledImages:
    """The "train" (rest) or "validation" (carved) part of a training list."""
    if part not in ("train", "validation"):
        raise ValueError(f"part must be 'train' or 'validation', got {part!r}")
    key = (tuple(images.paths), images.labels.tobytes(), fraction, seed)
    if key not in _SPLITS:
        if len(_SPLITS) >= 4:
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = split_indices(images.labels, content_groups(images.paths), fraction, seed)
    train, validation = _SPLITS[key]
    return subset(images, train if part == "train" else validation)
