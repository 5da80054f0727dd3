"""Video decode/encode on videos written in the test with OpenCV (30 frames, 10 fps)."""

import cv2
import numpy as np
import pytest

from fer_tf import video

FRAMES, FPS, WIDTH, HEIGHT = 30, 10.0, 96, 64
# mp4v is lossy: a decoded solid colour is within this many grey levels of the original.
COLOUR_TOL = 12


def _colour(i):
    return np.array([(i * 8) % 256, 128, 255 - (i * 8) % 256], np.uint8)  # RGB, far from the green boxes


@pytest.fixture()
def clip(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(FRAMES):
        frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        frame[:] = _colour(i)[::-1]  # OpenCV writes BGR
        writer.write(frame)
    writer.release()
    return path


def test_video_info(clip):
    assert video.video_info(clip) == video.VideoInfo(FRAMES, FPS, WIDTH, HEIGHT)
    assert video.count_frames(clip) == FRAMES


def test_iter_frames_indices_timestamps_rgb(clip):
    batches = list(video.iter_video_frames(clip, batch_size=8))
    assert [len(b[0]) for b in batches] == [8, 8, 8, 6]
    indices = np.concatenate([b[0] for b in batches])
    timestamps = np.concatenate([b[1] for b in batches])
    frames = np.concatenate([b[2] for b in batches])
    np.testing.assert_array_equal(indices, np.arange(FRAMES))
    np.testing.assert_allclose(timestamps, np.arange(FRAMES) / FPS, rtol=0, atol=1e-12)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    for i in range(FRAMES):
        mean = frames[i].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, _colour(i), atol=COLOUR_TOL, err_msg=f"frame {i} (RGB order)")


def test_missing_and_corrupt_videos_named(tmp_path, clip):
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        video.iter_video_frames(tmp_path / "nothere.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 50)
    with pytest.raises(ValueError, match="garbage.mp4"):
        video.iter_video_frames(garbage)
    truncated = tmp_path / "truncated.mp4"
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.mp4"):
        video.video_info(truncated)
    with pytest.raises(ValueError, match="batch_size"):
        video.iter_video_frames(clip, batch_size=0)


def test_write_annotated_video_round_trip(tmp_path, clip):
    out = tmp_path / "out" / "annotated.mp4"
    frames, annotations = [], []
    for _, _, batch in video.iter_video_frames(clip, batch_size=16):
        for frame in batch:
            frames.append(frame)
            annotations.append(([(20, 20, 40, 30, 0.99)], ["Happiness 0.99"]) if len(frames) % 2 else ((), ()))
    assert video.write_annotated_video(out, frames, FPS, annotations) == out
    assert [p.name for p in out.parent.iterdir()] == ["annotated.mp4"]  # no temp file left
    assert video.video_info(out) == video.VideoInfo(FRAMES, FPS, WIDTH, HEIGHT)
    decoded = np.concatenate([b[2] for b in video.iter_video_frames(out, batch_size=32)])
    # Frame 0 is annotated: the left edge of the box (x = 20..21, rows 30..45) is green (0, 255, 0).
    edge = decoded[0, 30:46, 20].astype(float).mean(axis=0)
    np.testing.assert_allclose(edge, [0, 255, 0], atol=60)
    # Frame 1 is not: same place keeps the frame's own colour.
    np.testing.assert_allclose(decoded[1, 30:46, 20].astype(float).mean(axis=0), _colour(1), atol=COLOUR_TOL)


def test_draw_annotations_checks_and_copies():
    frame = np.zeros((50, 50, 3), np.uint8)
    out = video.draw_annotations(frame, [(10, 10, 20, 20)], ["Anger"])
    assert not frame.any() and out.any()
    with pytest.raises(ValueError, match="1 boxes but 0 labels"):
        video.draw_annotations(frame, [(10, 10, 20, 20)], [])


def test_writer_rejects_wrong_size_and_aborts_cleanly(tmp_path):
    path = tmp_path / "x.mp4"
    with pytest.raises(ValueError, match="does not match"):
        with video.AnnotatedVideoWriter(path, FPS, WIDTH, HEIGHT) as writer:
            writer.write(np.zeros((10, 10, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_real_face_video_to_abaw_file(tmp_path, faces_dir):
    """Frames 0-3 and 6-9 show a real face, 4-5 are blank: detection finds exactly the
    face frames, and the ABAW file still has the header and one label per frame."""
    from fer_tf import faces, submission  # pylint: disable=import-outside-toplevel

    photo = cv2.resize(faces.read_image_rgb(faces_dir / "fer_justin.jpg"), (192, 192))
    path = tmp_path / "face.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (192, 192))
    has_face = [True] * 4 + [False] * 2 + [True] * 4
    for face in has_face:
        writer.write(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR) if face else np.full((192, 192, 3), 90, np.uint8))
    writer.release()

    detector = faces.FaceDetector()
    present, stamps = [], []
    for _, timestamps, frames in video.iter_video_frames(path, batch_size=4):
        present += [len(boxes) == 1 for boxes in detector.detect_batch(frames)]
        stamps += list(timestamps)
    assert present == has_face
    np.testing.assert_allclose(stamps, np.arange(10) / 5.0, atol=1e-12)
    # Stand-in classifier output: class 4 before the gap, class 0 after it.
    probs = np.full((10, 7), np.nan)
    probs[:4] = np.eye(7)[4]
    probs[6:] = np.eye(7)[0]
    labels = submission.labels_from_probabilities(probs, present)
    out = submission.write_abaw_submission(tmp_path / "face.txt", labels)
    lines = out.read_text().splitlines()
    assert lines[0] == "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise"
    # Gap frames 4 and 5 interpolate 1/3 and 2/3 of the way from class 4 to class 0.
    assert lines[1:] == ["4"] * 5 + ["0"] * 5
