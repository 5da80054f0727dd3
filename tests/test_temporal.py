"""Gap filling and windowed averaging on hand-computed cases (tolerance 1e-12)."""

import numpy as np
import pytest

from fer_tf import temporal

TOL = 1e-12
NAN = np.nan


def test_fill_missing_interpolates_between_neighbours_and_repeats_at_ends():
    probs = np.array([
        [NAN, NAN],   # before the first face -> repeat frame 1
        [1.0, 0.0],
        [NAN, NAN],   # 1/3 of the way from frame 1 to frame 4
        [NAN, NAN],   # 2/3 of the way
        [0.4, 0.6],
        [NAN, NAN],   # after the last face -> repeat frame 4
    ])
    present = [False, True, False, False, True, False]
    got = temporal.fill_missing(probs, present)
    want = np.array([[1.0, 0.0], [1.0, 0.0], [0.8, 0.2], [0.6, 0.4], [0.4, 0.6], [0.4, 0.6]])
    np.testing.assert_allclose(got, want, atol=TOL)


def test_fill_missing_leaves_present_frames_untouched():
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
    got = temporal.fill_missing(probs, [True, False, True])
    np.testing.assert_array_equal(got[[0, 2]], probs[[0, 2]])
    np.testing.assert_allclose(got[1], [0.35, 0.65], atol=TOL)


def test_fill_missing_all_missing():
    probs = np.full((3, 4), NAN)
    np.testing.assert_allclose(temporal.fill_missing(probs, [False] * 3), np.full((3, 4), 0.25))
    with pytest.raises(ValueError, match="no frame"):
        temporal.fill_missing(probs, [False] * 3, if_all_missing="error")


def test_fill_missing_shape_mismatch():
    with pytest.raises(ValueError, match="present has 2 entries"):
        temporal.fill_missing(np.zeros((3, 2)), [True, False])


def test_smooth_mean_centred_with_truncated_edges():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = temporal.smooth(probs, 3)
    want = np.array([
        [0.5, 0.5],          # frames 0,1
        [2 / 3, 1 / 3],      # frames 0,1,2
        [2 / 3, 1 / 3],      # frames 1,2,3
        [2 / 3, 1 / 3],      # frames 2,3,4
        [0.5, 0.5],          # frames 3,4
    ])
    np.testing.assert_allclose(got, want, atol=TOL)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=TOL)


def test_smooth_window_larger_than_video_is_global_mean():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(temporal.smooth(probs, 7), np.tile([[1 / 3, 2 / 3]], (3, 1)), atol=TOL)


def test_smooth_window_one_is_identity():
    probs = np.random.default_rng(0).dirichlet(np.ones(7), size=10)
    np.testing.assert_array_equal(temporal.smooth(probs, 1), probs)


def test_smooth_median_removes_a_one_frame_flicker():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])
    got = temporal.smooth(probs, 3, mode="median")
    np.testing.assert_allclose(got, np.tile([[0.9, 0.1]], (5, 1)), atol=TOL)
    # Edges: the median of two available frames is their mean, per class.
    edges = temporal.smooth(np.array([[1.0, 0.0], [0.0, 1.0]]), 3, mode="median")
    np.testing.assert_allclose(edges, [[0.5, 0.5], [0.5, 0.5]], atol=TOL)


@pytest.mark.parametrize("window", [0, 2, -1, 2.5])
def test_smooth_rejects_bad_window(window):
    with pytest.raises(ValueError, match="odd"):
        temporal.smooth(np.zeros((3, 2)), window)


def test_smooth_rejects_nan_and_bad_mode():
    with pytest.raises(ValueError, match="fill_missing"):
        temporal.smooth(np.array([[NAN, 1.0]]), 3)
    with pytest.raises(ValueError, match="mode"):
        temporal.smooth(np.zeros((3, 2)), 3, mode="max")


def test_smooth_video_predictions_fills_then_smooths():
    probs = np.array([[1.0, 0.0], [NAN, NAN], [0.0, 1.0]])
    got = temporal.smooth_video_predictions(probs, [True, False, True], window=3)
    # Filled: [1,0], [.5,.5], [0,1]; smoothed: mean of 2, 3, 2 frames.
    np.testing.assert_allclose(got, [[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]], atol=TOL)


def test_smooth_per_video_keeps_videos_apart_and_input_order():
    # Video "a": frames 10, 12 (11 missing); video "b": frames 0, 1. Shuffled order.
    probs = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    videos = ["b", "a", "b", "a"]
    frames = [1, 10, 0, 12]
    got = temporal.smooth_per_video(probs, videos, frames, window=3)
    # a: filled [1,0], [.5,.5], [0,1] -> frame 10: mean(f10, f11) = [.75,.25]; frame 12: [.25,.75]
    # b: [1,0] (frame 0), [0,1] (frame 1) -> both [.5,.5]
    want = np.array([[0.5, 0.5], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75]])
    np.testing.assert_allclose(got, want, atol=TOL)


def test_smooth_per_video_rejects_duplicate_frames():
    with pytest.raises(ValueError, match="same frame index"):
        temporal.smooth_per_video(np.ones((2, 2)) / 2, ["a", "a"], [3, 3], window=3)
