"""Image-folder reader on generated trees and on the real FER2013 folders."""

import cv2
import numpy as np
import pytest

import dataset_trees
from fer_tf import classes
from fer_tf.data import image_folder

# ../shared/data/fer2013/README.md table, per folder name.
FER2013_TRAIN = {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965,
                 "sad": 4830, "surprise": 3171}
FER2013_TEST = {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "neutral": 607,
                "sad": 653, "surprise": 415}


def _abaw_counts(per_folder):
    counts = [0] * classes.NUM_CLASSES
    for name, n in per_folder.items():
        counts[classes.FER2013_FOLDERS[name]] = n
    return counts


def test_generated_tree_counts_and_labels(tmp_path):
    dataset_trees.write_image_folder(tmp_path, "train", {"happy": 3, "sad": 2, "angry": 1})
    (tmp_path / "train" / "happy" / "readme.txt").write_text("not an image")
    images = image_folder.read_image_folder(tmp_path, "train")
    # Sorted by folder: angry (Anger 1), happy (Happiness 4), sad (Sadness 5).
    assert images.labels.tolist() == [1, 4, 4, 4, 5, 5]
    assert [p.rsplit("/", 2)[-2:] for p in images.paths][:4] == [
        ["angry", "0.jpg"], ["happy", "0.jpg"], ["happy", "1.png"], ["happy", "2.jpg"]]
    assert images.class_counts().tolist() == [0, 1, 0, 0, 3, 2, 0]


def test_custom_class_map_case_insensitive(tmp_path):
    dataset_trees.write_image_folder(tmp_path, "val", {"Joy": 2, "Calm": 1})
    images = image_folder.read_image_folder(tmp_path, "val", class_map={"joy": 4, "calm": 0})
    assert images.labels.tolist() == [0, 4, 4]


def test_unknown_class_folders_are_listed(tmp_path):
    dataset_trees.write_image_folder(tmp_path, "train", {"happy": 1, "contempt": 1, "pain": 1})
    with pytest.raises(ValueError, match=r"\['contempt', 'pain'\].*known names"):
        image_folder.read_image_folder(tmp_path, "train")


def test_missing_split_lists_what_exists(tmp_path):
    dataset_trees.write_image_folder(tmp_path, "train", {"happy": 1})
    with pytest.raises(FileNotFoundError, match=r"holds: \['train'\]"):
        image_folder.read_image_folder(tmp_path, "validation")


def test_class_map_index_out_of_range(tmp_path):
    dataset_trees.write_image_folder(tmp_path, "train", {"happy": 1})
    with pytest.raises(ValueError, match="outside"):
        image_folder.read_image_folder(tmp_path, "train", class_map={"happy": 7})


@pytest.mark.parametrize("split, expected", [("train", FER2013_TRAIN), ("test", FER2013_TEST)])
def test_real_fer2013_counts_match_readme(fer2013_dir, split, expected):
    images = image_folder.read_image_folder(fer2013_dir, split, class_map="fer2013")
    assert len(images) == sum(expected.values())
    assert images.class_counts().tolist() == _abaw_counts(expected)


def test_real_fer2013_sample_decodes(fer2013_dir):
    images = image_folder.read_image_folder(fer2013_dir, "test")
    rng = np.random.default_rng(0)
    for i in rng.choice(len(images), size=20, replace=False):
        image = cv2.imread(images.paths[i], cv2.IMREAD_UNCHANGED)
        assert image is not None, images.paths[i]
        assert image.shape == (48, 48), images.paths[i]  # grayscale; 3 channels at decode
