"""load_source: names, split mapping, merges, option checking."""

import os

import pytest

import dataset_trees
from fer_tf.data import sources


def test_affwild2_and_demo_use_the_affwild2_reader(tmp_path):
    root = dataset_trees.write_affwild2_2020(tmp_path)
    for name in ("affwild2", "demo"):
        assert len(sources.load_source(name, root, "train")) == 11
        assert sources.load_source(name, str(root), "validation").labels.tolist() == [5, 5, 0]


def test_affwild2_keep_other_option(tmp_path):
    root = dataset_trees.write_affwild2_2022(tmp_path)
    assert len(sources.load_source("affwild2", root, "train", keep_other=True)) == 4


def test_expw_default_cache_inside_data_dir(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    images = sources.load_source("expw", root, "train", min_confidence=0.5)
    assert len(images) == 7
    assert images.paths[0].startswith(str(root / sources.EXPW_DEFAULT_CACHE))
    with pytest.raises(ValueError, match="no 'validation' split"):
        sources.load_source("expw", root, "validation")


def test_merge_with_comma_list_and_dict(tmp_path):
    aff = dataset_trees.write_affwild2_2020(tmp_path / "aff")
    exp = dataset_trees.write_expw(tmp_path / "expw")
    cache = tmp_path / "cache"
    merged = sources.load_source("affwild2+expw", f"{aff},{exp}", "train", cache_dir=cache)
    assert len(merged) == 11 + 8
    assert merged.labels.tolist() == [0, 1, 3, 4, 5, 6, 0, 4, 4, 4, 6] + [4, 0, 1, 2, 3, 5, 6, 0]
    assert merged.videos[:1] == ["v1"] and merged.videos[-1] == ""
    as_dict = sources.load_source("expw+affwild2", {"affwild2": aff, "expw": exp}, "train",
                                  cache_dir=cache)
    assert as_dict.labels.tolist()[:8] == [4, 0, 1, 2, 3, 5, 6, 0]
    assert len(as_dict) == 19


def test_merge_needs_one_dir_per_part(tmp_path):
    with pytest.raises(ValueError, match="needs 2 comma-separated"):
        sources.load_source("affwild2+expw", str(tmp_path), "train")
    with pytest.raises(ValueError, match="no entry for"):
        sources.load_source("affwild2+expw", {"affwild2": str(tmp_path)}, "train")


def test_fer2013_split_mapping(tmp_path):
    dataset_trees.write_image_folder(tmp_path, "train", {"happy": 2})
    dataset_trees.write_image_folder(tmp_path, "test", {"sad": 3})
    assert sources.load_source("fer2013", tmp_path, "train_all").labels.tolist() == [4, 4]
    assert sources.load_source("fer2013", tmp_path, "test").labels.tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="FER2013 split 'val' unknown"):
        sources.load_source("fer2013", tmp_path, "val")


def test_image_folder_split_aliases_and_class_map(tmp_path):
    dataset_trees.write_image_folder(tmp_path, "val", {"joy": 1})
    images = sources.load_source("image_folder", tmp_path, "validation", class_map={"joy": 4})
    assert images.labels.tolist() == [4]
    assert os.path.basename(os.path.dirname(os.path.dirname(images.paths[0]))) == "val"


def test_unknown_dataset_and_option(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'affectnet'"):
        sources.load_source("affwild2+affectnet", f"{tmp_path},{tmp_path}", "train")
    with pytest.raises(ValueError, match=r"\['keep_othr'\]"):
        sources.load_source("affwild2", tmp_path, "train", keep_othr=True)


def test_real_fer2013_test_is_public_test(fer2013_dir):
    assert len(sources.load_source("fer2013", fer2013_dir, "test")) == 3589
