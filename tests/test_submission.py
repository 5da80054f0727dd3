"""ABAW submission files: exact contents, gap filling, refusal of -1."""

import numpy as np
import pytest

from fer_tf import submission

HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise\n"


def test_write_exact_contents(tmp_path):
    out = submission.write_abaw_submission(tmp_path / "sub" / "video1_left.txt", [0, 4, 4, 6, 1])
    assert out == tmp_path / "sub" / "video1_left.txt"
    assert out.read_bytes() == (HEADER + "0\n4\n4\n6\n1\n").encode()
    # No temporary files left behind.
    assert [p.name for p in out.parent.iterdir()] == ["video1_left.txt"]


def test_write_custom_class_names(tmp_path):
    out = submission.write_abaw_submission(tmp_path / "v.txt", np.array([2, 0]), ["a", "b", "c"])
    assert out.read_text() == "a,b,c\n2\n0\n"


def test_write_refuses_negative_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="frame 2 has label -1"):
        submission.write_abaw_submission(tmp_path / "v.txt", [0, 1, -1, 3])
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_out_of_range_empty_and_fractional(tmp_path):
    with pytest.raises(ValueError, match="not below the 7 classes"):
        submission.write_abaw_submission(tmp_path / "v.txt", [7])
    with pytest.raises(ValueError, match="no frames"):
        submission.write_abaw_submission(tmp_path / "v.txt", [])
    with pytest.raises(ValueError, match="integers"):
        submission.write_abaw_submission(tmp_path / "v.txt", [0.5])


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("old\n")
    submission.write_abaw_submission(path, [3])
    assert path.read_text() == HEADER + "3\n"


def test_labels_from_probabilities_fills_gaps_then_argmax():
    nan = np.nan
    probs = np.array([
        [nan] * 3,          # before first face: repeats frame 1 -> 2
        [0.1, 0.2, 0.7],
        [nan] * 3,          # halfway: [0.45, 0.25, 0.3] -> 0
        [0.8, 0.3, -0.1],
        [nan] * 3,          # after last face: repeats frame 3 -> 0
    ])
    labels = submission.labels_from_probabilities(probs, [False, True, False, True, False])
    np.testing.assert_array_equal(labels, [2, 2, 0, 0, 0])
    assert labels.dtype == np.int64


def test_labels_from_probabilities_with_smoothing_and_no_face(tmp_path):
    probs = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # Window 3 removes the one-frame flicker at frame 2.
    np.testing.assert_array_equal(
        submission.labels_from_probabilities(probs, [True] * 5, smooth_window=3), [1, 1, 1, 1, 1])
    # No face anywhere: every frame gets class 0, and the file is still complete.
    labels = submission.labels_from_probabilities(np.full((3, 7), np.nan), [False] * 3)
    out = submission.write_abaw_submission(tmp_path / "empty.txt", labels)
    assert out.read_text() == HEADER + "0\n0\n0\n"
