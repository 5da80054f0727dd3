"""The validation split carved out of a training list (fer_tf.data.holdout)."""

import hashlib

import cv2
import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from fer_tf.data import examples, holdout, sources


def _labels(per_class):
    return np.repeat(np.arange(len(per_class)), per_class)


def test_split_is_stratified_disjoint_and_seeded():
    labels = _labels([400, 50, 300, 200, 700, 350, 250])
    groups = np.arange(len(labels))
    train, val = holdout.split_indices(labels, groups, 0.1, seed=0)
    assert not set(train) & set(val)
    assert len(train) + len(val) == len(labels)
    # Every class keeps its share within one example (StratifiedGroupKFold, unique groups).
    for c, n in enumerate(np.bincount(labels)):
        assert abs(np.sum(labels[val] == c) - n / 10) <= 1
    again_train, again_val = holdout.split_indices(labels, groups, 0.1, seed=0)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    _, other_val = holdout.split_indices(labels, groups, 0.1, seed=1)
    assert set(other_val) != set(val)


def test_identical_files_land_in_one_split(tmp_path):
    paths, labels = [], []
    for i in range(120):
        # Every third image is a byte-identical copy of the one before it.
        value = i - 1 if i % 3 == 2 else i
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((4, 4), value, np.uint8))
        paths.append(str(path))
        labels.append(i % 2)
    groups = holdout.content_groups(paths)
    assert len(set(groups)) == 80
    train, val = holdout.split_indices(np.array(labels), groups, 0.2, seed=3)
    assert not set(groups[train]) & set(groups[val])


def _sklearn_split(labels, groups, fraction, seed):
    folds = StratifiedGroupKFold(n_splits=round(1 / fraction), shuffle=True, random_state=seed)
    train, validation = next(folds.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train), np.sort(validation)


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_carve_equals_scikit_learn_stratified_group_kfold_exactly():
    """Many small random lists: duplicates, rare classes and exact ties in the greedy choice.

    The carve follows scikit-learn 1.9's shuffle (the `dev` extra requires >= 1.9)."""
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(100):
        n = int(rng.integers(30, 300))
        labels = rng.integers(0, int(rng.integers(2, 8)), n)
        groups = rng.integers(0, int(rng.integers(15, n + 1)), n)
        fraction, seed = float(rng.choice([0.1, 0.2, 0.25, 0.5])), int(rng.integers(0, 1000))
        try:
            expected = _sklearn_split(labels, groups, fraction, seed)
        except ValueError:  # fewer groups or class members than folds
            continue
        got = holdout.split_indices(labels, groups, fraction, seed)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        compared += 1
    assert compared > 60


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match="fraction"):
        holdout.split_indices(np.zeros(10), np.arange(10), 0.0)


def test_fer2013_splits_carve_validation_from_train(tmp_path):
    for split, per_class in (("train", 30), ("test", 4)):
        for c, name in enumerate(("happy", "sad")):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                # Distinct pixels everywhere, so no two files are identical.
                image = np.full((6, 6), i, np.uint8)
                image[0, 0] = c + 10 * (split == "test")
                cv2.imwrite(str(folder / f"{i}.png"), image)
    train = sources.load_source("fer2013", tmp_path, "train")
    val = sources.load_source("fer2013", tmp_path, "validation")
    test = sources.load_source("fer2013", tmp_path, "test")
    everything = sources.load_source("fer2013", tmp_path, "train_all")
    assert len(train) == 54 and len(val) == 6 and len(test) == 8 and len(everything) == 60
    assert sorted(train.paths + val.paths) == sorted(everything.paths)
    assert all("/test/" in p for p in test.paths)
    assert sorted(np.bincount(val.labels)[[4, 5]]) == [3, 3]  # Happiness, Sadness


def test_subset_keeps_every_field():
    images = examples.LabelledImages(["a", "b", "c"], [1, 2, 3], videos=["v", "w", "x"],
                                     frames=[5, 6, 7])
    picked = examples.subset(images, [2, 0])
    assert picked.paths == ["c", "a"] and picked.labels.tolist() == [3, 1]
    assert picked.videos == ["x", "v"] and picked.frames.tolist() == [7, 5]
    assert examples.subset(images, np.array([False, True, False])).paths == ["b"]


def _sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def test_real_fer2013_validation_is_disjoint_stable_and_stratified(fer2013_dir):
    everything = sources.load_source("fer2013", fer2013_dir, "train_all")
    train = sources.load_source("fer2013", fer2013_dir, "train")
    val = sources.load_source("fer2013", fer2013_dir, "validation")
    assert len(everything) == 28709
    assert not set(train.paths) & set(val.paths)
    assert len(train) + len(val) == len(everything)
    # No byte-identical image on both sides.
    assert not {_sha1(p) for p in val.paths} & {_sha1(p) for p in train.paths}
    # About 10% of every class (groups of duplicates move whole, so allow 1.5 points).
    share = val.class_counts() / everything.class_counts()
    assert np.all(np.abs(share - 0.1) < 0.015), share
    # Stable: the carve recomputed from scratch (no memo) picks the same files.
    _, again = holdout.split_indices(everything.labels, holdout.content_groups(everything.paths))
    assert [everything.paths[i] for i in again] == val.paths
