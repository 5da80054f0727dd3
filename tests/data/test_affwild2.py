"""Aff-Wild2 reader on generated trees in every ABAW layout (counts written by hand)."""

import os

import numpy as np
import pytest

import dataset_trees
from fer_tf import classes
from fer_tf.data import affwild2


def _names(images):
    return [os.path.relpath(p, os.path.dirname(os.path.dirname(p))) for p in images.paths]


def test_2020_train_counts_and_line_to_frame_rule(tmp_path):
    root = dataset_trees.write_affwild2_2020(tmp_path)
    images, report = affwild2.read_affwild2_with_report(root, "train")
    # v1 keeps lines 0,1,4,5,6,7,9 (line 2/8 unannotated, line 3 has no crop 00004.jpg);
    # v2_left all 3; v2_right line 0 (line 1 unannotated, line 2 no crop); v3 no folder.
    assert _names(images) == [
        "v1/00001.jpg", "v1/00002.jpg", "v1/00005.jpg", "v1/00006.jpg", "v1/00007.jpg",
        "v1/00008.jpg", "v1/00010.jpg",
        "v2_left/00001.jpg", "v2_left/00002.jpg", "v2_left/00003.jpg",
        "v2_right/00001.jpg",
    ]
    assert images.labels.tolist() == [0, 1, 3, 4, 5, 6, 0, 4, 4, 4, 6]
    assert images.frames.tolist() == [0, 1, 4, 5, 6, 7, 9, 0, 1, 2, 0]
    assert images.videos == ["v1"] * 7 + ["v2_left"] * 3 + ["v2_right"]
    assert images.class_names == classes.CLASS_NAMES
    assert all(os.path.isfile(p) for p in images.paths)
    assert report.videos == 4
    assert report.labelled_frames == 10 + 3 + 3 + 2
    assert report.kept == 11
    assert report.unannotated == 3
    assert report.no_crop == 1 + 1 + 2
    assert report.other_dropped == 0
    assert report.videos_without_crops == ["v3"]
    assert report.class_counts == {
        "Neutral": 2, "Anger": 1, "Disgust": 0, "Fear": 1, "Happiness": 4, "Sadness": 1,
        "Surprise": 2,
    }
    assert report.annotation_dir.endswith(os.path.join("EXPR_Set", "Training_Set"))


def test_2020_validation_and_plain_reader(tmp_path):
    root = dataset_trees.write_affwild2_2020(tmp_path)
    images = affwild2.read_affwild2(root, "validation")
    assert _names(images) == ["val1/00001.jpg", "val1/00002.jpg", "val1/00004.jpg"]
    assert images.labels.tolist() == [5, 5, 0]


def test_root_may_be_the_annotation_folder(tmp_path):
    dataset_trees.write_affwild2_2020(tmp_path)
    images = affwild2.read_affwild2(tmp_path / "annotations", "validation")
    assert len(images) == 3


def test_2022_other_dropped_by_default(tmp_path):
    root = dataset_trees.write_affwild2_2022(tmp_path)
    images, report = affwild2.read_affwild2_with_report(root, "train")
    # [7, 0, 7, -1, 3, -5]: Other twice, unannotated twice (-1 and -5).
    assert images.labels.tolist() == [0, 3]
    assert images.frames.tolist() == [1, 4]
    assert images.class_names == classes.CLASS_NAMES
    assert (report.kept, report.other_dropped, report.unannotated, report.no_crop) == (2, 2, 2, 0)


def test_2022_other_kept(tmp_path):
    root = dataset_trees.write_affwild2_2022(tmp_path)
    images, report = affwild2.read_affwild2_with_report(root, "train", keep_other=True)
    assert images.labels.tolist() == [7, 0, 7, 3]
    assert images.frames.tolist() == [0, 1, 2, 4]
    assert images.class_names == classes.CLASS_NAMES + ("Other",)
    assert report.class_counts["Other"] == 2
    assert report.other_dropped == 0
    val = affwild2.read_affwild2(root, "validation", keep_other=True)
    assert val.labels.tolist() == [2, 7]


def test_2024_layout_inside_extra_folder(tmp_path):
    root = dataset_trees.write_affwild2_2022(
        tmp_path, challenge="EXPR_Recognition_Challenge", parent="6th ABAW Annotations")
    images = affwild2.read_affwild2(root, "validation")
    assert images.labels.tolist() == [2]
    assert images.videos == ["b"]


def test_missing_annotations_lists_what_was_expected(tmp_path):
    (tmp_path / "cropped_aligned").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        affwild2.read_affwild2(tmp_path, "train")
    message = str(error.value)
    assert "Training_Set" in message and "Train_Set" in message
    assert "EXPR_Recognition_Challenge" in message


def test_missing_crops_folder_is_an_error(tmp_path):
    dataset_trees.write_video(tmp_path / "annotations/EXPR_Set/Train_Set", tmp_path / "elsewhere",
                              "v", [0])
    with pytest.raises(FileNotFoundError, match="cropped_aligned"):
        affwild2.read_affwild2(tmp_path, "train")
    images = affwild2.read_affwild2(tmp_path, "train", crops_dir=tmp_path / "elsewhere")
    assert images.labels.tolist() == [0]


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="test"):
        affwild2.read_affwild2(tmp_path, "test")


@pytest.mark.parametrize("bad, line", [("3\nabc", 3), ("1.5", 2), ("7", 2), ("0\n\n2", 3)])
def test_malformed_line_names_file_and_line(tmp_path, bad, line):
    ann = tmp_path / "annotations" / "EXPR_Set" / "Train_Set"
    ann.mkdir(parents=True)
    (tmp_path / "cropped_aligned").mkdir()
    (ann / "bad.txt").write_text(dataset_trees.HEADER7 + "\n" + bad + "\n")
    with pytest.raises(ValueError, match=rf"bad\.txt:{line}:"):
        affwild2.read_affwild2(tmp_path, "train")


def test_non_utf8_byte_names_file_and_line(tmp_path):
    ann = tmp_path / "annotations" / "EXPR_Set" / "Train_Set"
    ann.mkdir(parents=True)
    (tmp_path / "cropped_aligned").mkdir()
    (ann / "latin.txt").write_bytes((dataset_trees.HEADER7 + "\n0\n").encode() + b"\xe9\n")
    with pytest.raises(ValueError, match=r"latin\.txt:3: byte 0xe9 is not utf-8-sig text"):
        affwild2.read_affwild2(tmp_path, "train")


def test_unknown_header_class(tmp_path):
    ann = tmp_path / "annotations" / "EXPR_Set" / "Train_Set"
    ann.mkdir(parents=True)
    (tmp_path / "cropped_aligned").mkdir()
    (ann / "h.txt").write_text("Neutral,Joy\n0\n")
    with pytest.raises(ValueError, match=r"h\.txt:1:.*Joy"):
        affwild2.read_affwild2(tmp_path, "train")


def test_trailing_blank_lines_and_crlf_are_accepted(tmp_path):
    ann = tmp_path / "annotations" / "EXPR_Set" / "Train_Set"
    dataset_trees.write_video(ann, tmp_path / "cropped_aligned", "w", [3, 4])
    (ann / "w.txt").write_bytes((dataset_trees.HEADER7 + "\r\n3\r\n4\r\n\r\n").encode())
    images = affwild2.read_affwild2(tmp_path, "train")
    assert images.labels.tolist() == [3, 4]


def test_parse_many_frames_is_fast(tmp_path):
    # 300k label lines parse vectorised; a per-line Python loop with os.stat per frame
    # would take seconds. Generous bound (2 shared cores): 3 s.
    import time
    path = tmp_path / "long.txt"
    labels = np.tile(np.arange(-1, 7), 300_000 // 8)
    path.write_text(dataset_trees.HEADER7 + "\n" + "\n".join(map(str, labels)) + "\n")
    start = time.perf_counter()
    parsed, other = affwild2.parse_annotation_file(path)
    assert time.perf_counter() - start < 3.0
    assert parsed.tolist() == labels.tolist() and other == 0


def test_extra_crop_folders_of_later_editions(tmp_path):
    # 2023 shipped crops of new videos in cropped_aligned_new_50_vids/ beside cropped_aligned/.
    root = dataset_trees.write_affwild2_2022(tmp_path)
    dataset_trees.write_video(root / "EXPR_Classification_Challenge" / "Train_Set",
                              root / "cropped_aligned_new_50_vids", "new", [6, 6],
                              header=dataset_trees.HEADER8)
    images, report = affwild2.read_affwild2_with_report(root, "train")
    assert images.videos == ["a", "a", "new", "new"]
    assert images.labels.tolist() == [0, 3, 6, 6]
    assert images.paths[-1].endswith(os.path.join("cropped_aligned_new_50_vids", "new", "00002.jpg"))
    assert report.crops_dirs == [str(root / "cropped_aligned"),
                                 str(root / "cropped_aligned_new_50_vids")]
    assert report.videos_without_crops == []


def test_explicit_list_of_crop_folders(tmp_path):
    root = dataset_trees.write_affwild2_2020(tmp_path)
    only_v3 = tmp_path / "more"
    dataset_trees.write_video(tmp_path / "unused", only_v3, "v3", [1, 1])
    images, report = affwild2.read_affwild2_with_report(
        root, "train", crops_dir=[root / "cropped_aligned", only_v3])
    assert report.kept == 13 and report.videos_without_crops == []


def test_summary_is_logged(tmp_path, caplog):
    root = dataset_trees.write_affwild2_2020(tmp_path)
    with caplog.at_level("INFO"):
        affwild2.read_affwild2(root, "train")
    text = caplog.text
    assert "11 frames kept from 4 videos" in text
    assert "3 unannotated, 4 without a crop" in text
    assert "4 Happiness" in text
