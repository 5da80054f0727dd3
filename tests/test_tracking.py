"""Faces followed across frames: IoU matching, track ids, optical-flow boxes, and the
detect-every-k video path against per-frame detection on a video made from a real photo."""

import numpy as np
import pytest

from fer_tf import faces, inference, predict, tracking, video
from fer_tf.faces import Box

FRAMES = 40


def test_iou_and_hungarian_matching():
    a, b = Box(0, 0, 10, 10, 1.0), Box(5, 0, 10, 10, 1.0)
    # Overlap 5x10 = 50, union 150.
    assert tracking.iou_matrix([a], [b])[0, 0] == pytest.approx(1 / 3, abs=1e-12)
    far = Box(100, 100, 10, 10, 1.0)
    # Greedy on the first row would give a->b; the best total pairs a->a2, b->b2.
    a2, b2 = Box(1, 0, 10, 10, 1.0), Box(6, 0, 10, 10, 1.0)
    assert sorted(tracking.match_boxes([a, b, far], [b2, a2], min_iou=0.3)) == [(0, 1), (1, 0)]
    assert tracking.match_boxes([], [a]) == []


def test_track_ids_follow_faces_and_end_after_the_gap():
    assigner = tracking.TrackAssigner(max_gap=2, min_iou=0.3)
    left, right = Box(0, 0, 20, 20, 1.0), Box(100, 0, 20, 20, 1.0)
    assert assigner.assign(0, [left, right]) == [0, 1]
    # Reading order swapped: ids follow the boxes, not the list position.
    assert assigner.assign(1, [right, left]) == [1, 0]
    assert assigner.assign(4, [left]) == [0]  # unseen for frames 2-3: within the gap
    assert assigner.assign(7, [left, right]) == [0, 2]  # right unseen for 5 frames: new id
    with pytest.raises(ValueError, match="max_gap"):
        tracking.TrackAssigner(max_gap=-1)


@pytest.fixture(scope="module")
def photo(faces_dir):
    return faces.read_image_rgb(faces_dir / "pyfeat_multi_face.jpg")


def test_flow_moves_a_box_with_the_image(photo):
    """A shift of the image by (7, -4) pixels moves the box by the same amount, within
    1 pixel; an unstructured frame loses it."""
    box = faces.FaceDetector().detect(photo)[0]
    shifted = np.roll(photo, (-4, 7), axis=(0, 1))
    tracker = tracking.FlowBoxTracker()
    tracker.start(tracking.to_gray(photo), [box])
    moved = tracker.step(tracking.to_gray(shifted))[0]
    assert abs(moved.x - (box.x + 7)) <= 1 and abs(moved.y - (box.y - 4)) <= 1
    assert abs(moved.w - box.w) <= 1 and abs(moved.h - box.h) <= 1
    assert tracker.step(np.full(photo.shape[:2], 90, np.uint8)) == [None]


@pytest.fixture(scope="module")
def pan_video(photo, tmp_path_factory):
    return video.write_camera_pan(photo, tmp_path_factory.mktemp("video") / "pan.mp4", FRAMES)


@pytest.fixture(scope="module")
def shipped():
    return inference.load_classifier(None, batch_size=32)


def test_detect_every_5_follows_per_frame_detection(pan_video, shipped):
    """Five faces, a moving camera: every face keeps one track id in every frame, and the
    boxes between detections overlap the per-frame detector's (mean IoU >= 0.8, the
    issue's bar; measured about 0.94) with the same labels on at least 90% of faces."""
    detector = faces.FaceDetector()
    runs = {k: predict.predict(None, pan_video, classifier=shipped, detector=detector,
                               detect_every=k, progress=False)["videos"][str(pan_video)]
            for k in (1, 5)}
    every, tracked = runs[1], runs[5]
    assert tracked.detections < every.detections == FRAMES
    assert {r.box_source for r in tracked.rows} == {"detected", "tracked"}
    for run in (every, tracked):
        ids = {}
        for row in run.rows:
            ids.setdefault(row.track_id, set()).add(row.frame)
        assert len(ids) == 5 and all(len(frames) == FRAMES for frames in ids.values())
    ious, agree = [], []
    for frame in range(FRAMES):
        ref = [r for r in every.rows if r.frame == frame]
        got = [r for r in tracked.rows if r.frame == frame]
        overlap = tracking.iou_matrix([r.box for r in ref], [r.box for r in got])
        best = overlap.argmax(axis=1)
        ious += list(overlap.max(axis=1))
        agree += [r.label == got[j].label for r, j in zip(ref, best)]
    assert np.mean(ious) >= 0.8, np.mean(ious)
    assert np.mean(agree) >= 0.9, np.mean(agree)
    assert tracked.main_track is not None and len(tracked.frame_labels) == FRAMES
