"""ExpW reader: label.lst parsing, duplicates, confidence, crops, cache and resume."""

import os

import cv2
import numpy as np
import pytest

import dataset_trees
from fer_tf.data import expw


def _read(root, cache, **kwargs):
    return expw.read_expw_with_report(root, cache, num_workers=2, **kwargs)


def test_counts_labels_and_crop_shapes(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    images, report = _read(root, tmp_path / "cache")
    # ExpW 3 happy -> 4, 6 neutral -> 0, then p2's 0..6 except 3 -> 1, 2, 3, 5, 6, 0.
    assert images.labels.tolist() == [4, 0, 1, 2, 3, 5, 6, 0]
    assert (report.lines, report.duplicates, report.low_confidence) == (11, 1, 0)
    assert (report.missing_images, report.empty_boxes, report.kept) == (1, 1, 8)
    assert (report.cropped, report.cached) == (8, 0)
    assert report.missing_image_names == ["gone.jpg"]
    assert images.videos == [""] * 8 and images.frames.tolist() == [-1] * 8
    shapes = [cv2.imread(p).shape[:2] for p in images.paths]
    assert shapes == [(30, 30), (20, 30)] + [(10, 10)] * 6
    assert all(os.path.dirname(p) == str(tmp_path / "cache" / "margin_0") for p in images.paths)


def test_crop_content_is_the_box(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    images, _ = _read(root, tmp_path / "cache")
    photo = cv2.imread(str(root / "image" / "origin" / "p1.jpg"))
    crop = cv2.imread(images.paths[0]).astype(np.float64)
    # Box top=10 left=20 right=50 bottom=40; two JPEG round trips of random pixels:
    # mean absolute error stays small relative to the 0..255 range (tolerance 20).
    expected = photo[10:40, 20:50].astype(np.float64)
    assert np.abs(crop - expected).mean() < 20
    assert np.abs(crop - photo[0:30, 0:30]).mean() > 40  # a different region differs


def test_every_expw_label_is_remapped(tmp_path):
    lines = [f"p2.jpg {i} 0 0 10 10 0.9 {i}" for i in range(7)]
    root = dataset_trees.write_expw(tmp_path / "expw", lines)
    images, _ = _read(root, tmp_path / "cache")
    # angry disgust fear happy sad surprise neutral -> ABAW indices (docs/datasets.md).
    assert images.labels.tolist() == [1, 2, 3, 4, 5, 6, 0]


def test_min_confidence(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    images, report = _read(root, tmp_path / "cache", min_confidence=0.5)
    assert report.low_confidence == 1
    assert images.labels.tolist() == [4, 1, 2, 3, 5, 6, 0]


def test_margin_enlarges_and_clips(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    images, _ = _read(root, tmp_path / "cache", margin=0.5)
    shapes = [cv2.imread(p).shape[:2] for p in images.paths]
    # p1 face 0 (60x80 photo): rows 10-15..40+15 -> 0..55, cols 20-15..50+15 -> 5..65.
    # p1 face 1: rows 5-10..25+10 -> 0..35 (clipped), cols 0-15..30+15 -> 0..45.
    # p2 face 0 (30x40 photo): rows 0-5..10+5 -> 0..15, cols 0..15.
    assert shapes[:3] == [(55, 60), (35, 45), (15, 15)]
    assert os.path.dirname(images.paths[0]).endswith("margin_0.5")


def test_resume_does_not_redo_complete_crops(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    cache = tmp_path / "cache"
    first, _ = _read(root, cache)
    # Simulate an interruption: one crop never written, a stale temp file left behind,
    # and mark another crop so we can see it is not rewritten.
    os.remove(first.paths[3])
    stale = first.paths[3] + ".tmp-1234-5"
    with open(stale, "wb") as f:
        f.write(b"partial")
    marker = dataset_trees.jpeg_bytes(7)
    with open(first.paths[0], "wb") as f:
        f.write(marker)
    second, report = _read(root, cache)
    assert (report.cropped, report.cached) == (1, 7)
    assert second.paths == first.paths
    with open(second.paths[0], "rb") as f:
        assert f.read() == marker
    assert cv2.imread(second.paths[3]).shape[:2] == (10, 10)


def test_missing_photo_of_a_cached_crop_is_fine(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    _read(root, tmp_path / "cache")
    os.remove(root / "image" / "origin" / "p2.jpg")
    images, report = _read(root, tmp_path / "cache")
    assert report.kept == 8 and report.cached == 8 and report.missing_images == 1


@pytest.mark.parametrize("line, what", [
    ("p1.jpg 0 10 20 50 40 0.95", "8 space-separated"),
    ("p1.jpg 0 10 x 50 40 0.95 3", "integers"),
    ("p1.jpg 0 10 20 50 40 0.95 7", "outside 0..6"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, what):
    root = dataset_trees.write_expw(tmp_path / "expw", ["p1.jpg 0 10 20 50 40 0.95 3", line])
    with pytest.raises(ValueError, match=rf"label\.lst:2: .*{what}"):
        _read(root, tmp_path / "cache")


def test_non_utf8_byte_names_file_and_line(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw", ["p1.jpg 0 10 20 50 40 0.95 3"])
    label_file = root / "label" / "label.lst"
    label_file.write_bytes(label_file.read_bytes() + "café.jpg 0 1 2 3 4 0.9 3\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"label\.lst:2: byte 0xe9 is not utf-8 text"):
        _read(root, tmp_path / "cache")


def test_missing_label_file_lists_expected_paths(tmp_path):
    (tmp_path / "image" / "origin").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"label[/\\]label\.lst"):
        expw.read_expw(tmp_path, tmp_path / "cache")


def test_plain_reader_matches(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    images = expw.read_expw(root, tmp_path / "cache", min_confidence=0.5)
    assert len(images) == 7
