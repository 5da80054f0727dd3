"""Carving a validation split out of a training list (FER2013 has none of its own).

FER2013's PublicTest is the split results are reported on, so checkpoints and settings
must be chosen on images taken from ``train``. The carve is stratified by class (every
class keeps its share), seeded (the same images for the same seed on every machine), and
keeps byte-identical files together: FER2013 holds about 1,100 groups of identical
images, and a copy in each split would let validation reward memorisation.
"""

import hashlib

import numpy as np

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

    The validation part is the first fold of scikit-learn 1.9's
    ``StratifiedGroupKFold(n_splits=round(1 / fraction), shuffle=True, random_state=seed)``,
    computed here with the same arithmetic, bit for bit (tested against it), for two
    reasons: scikit-learn's loop takes about half a minute on FER2013's 28,709 images at
    every training start, and its result with ``shuffle=True`` differs between releases
    (scikit-learn PR 32540 fixed how the shuffled groups map back to examples; older
    releases carve other files), while the carve must name the same files on every
    machine to keep a shipped model's selection reproducible.

    Args:
      labels: class index per example.
      groups: group id per example (`content_groups`); a group lands in one split.
      fraction: share of examples for validation, in (0, 0.5].
      seed: the carve's seed.

    Raises:
      ValueError: a fraction outside (0, 0.5], or fewer groups than folds.
    """
    if not 0 < fraction <= 0.5:
        raise ValueError(f"validation fraction must be in (0, 0.5], got {fraction}")
    fold_of_group, groups_inv = _greedy_group_folds(labels, groups, round(1 / fraction), seed)
    in_validation = fold_of_group[groups_inv] == 0
    return np.flatnonzero(~in_validation), np.flatnonzero(in_validation)


def _group_class_counts(labels, groups, seed):
    """Per-group class counts in the seeded shuffled group order, and each example's group."""
    _, y_inv, class_counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    _, groups_inv = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(groups_inv.max()) + 1
    counts = np.zeros((n_groups, len(class_counts)))
    np.add.at(counts, (groups_inv, y_inv), 1)
    order = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(order)
    position = np.empty_like(order)
    position[order] = np.arange(n_groups)
    return counts[order], position[groups_inv], class_counts


def _greedy_group_folds(labels, groups, n_splits, seed):
    """(fold per shuffled group, shuffled group per example): scikit-learn's greedy assignment.

    Groups go, most class-skewed first, to the fold that keeps the per-class shares of
    all folds most even (mean over classes of the std over folds), ties (np.isclose) to
    the fold with fewer examples. All ten candidate folds are scored in one array op;
    the reductions run over the same axis order as scikit-learn's, so the floats (and
    every tie) are identical.
    """
    counts, groups_inv, class_counts = _group_class_counts(labels, groups, seed)
    if n_splits > len(counts):
        raise ValueError(f"cannot carve {n_splits} folds out of {len(counts)} groups")
    per_fold = np.zeros((n_splits, counts.shape[1]))
    add_to_candidate = np.eye(n_splits)[:, :, None]  # [candidate, fold, 1]
    fold_of_group = np.empty(len(counts), np.int64)
    for group in np.argsort(-np.std(counts, axis=1), kind="stable"):
        candidates = per_fold[None] + add_to_candidate * counts[group]
        evals = np.mean(np.std(candidates / class_counts, axis=1), axis=1).tolist()
        best = _first_best(evals, per_fold.sum(axis=1).tolist())
        per_fold[best] += counts[group]
        fold_of_group[group] = best
    return fold_of_group, groups_inv


def _first_best(evals, sizes):
    """scikit-learn's choice: lowest eval; an np.isclose tie goes to the smaller fold."""
    best, best_eval, best_size = 0, evals[0], sizes[0]
    for i in range(1, len(evals)):
        close = abs(evals[i] - best_eval) <= 1e-8 + 1e-5 * abs(best_eval)
        if evals[i] < best_eval or (close and sizes[i] < best_size):
            best, best_eval, best_size = i, evals[i], sizes[i]
    return best


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
