"""fer_tf.predict on the real photos and on a video made from one, with a tiny .keras model."""

import csv
import pathlib

import cv2
import keras
import numpy as np
import pytest

from fer_tf import faces, inference, model as model_lib, predict, submission
from fer_tf.classes import CLASS_NAMES

# Faces MTCNN finds with FaceDetector() defaults (tests/test_faces.py measures the same).
EXPECTED_FACES = {
    "pyfeat_single_face.jpg": 1,
    "fer_justin.jpg": 1,
    "pyfeat_multi_face.jpg": 5,
    "ina_India_236650352.jpg": 5,
}
PROB_COLUMNS = [f"p_{n}" for n in CLASS_NAMES]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    keras.utils.set_random_seed(11)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model_lib.build_expression_model("tiny").save(path)
    return inference.load_classifier(path, batch_size=8)


@pytest.fixture(scope="module")
def model_path(classifier):
    return classifier.path


@pytest.fixture(scope="module")
def detector():
    return faces.FaceDetector()


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_probabilities(rows):
    for row in rows:
        probs = np.array([float(row[c]) for c in PROB_COLUMNS])
        # Written with 6 decimals: 7 roundings of 5e-7 at most, well within 1e-5.
        assert abs(probs.sum() - 1.0) <= 1e-5, row
        assert row["label"] == CLASS_NAMES[int(np.argmax(probs))]


def test_photos_one_row_per_face(classifier, detector, faces_dir, tmp_path):
    out = tmp_path / "photos.csv"
    summary = predict.predict(None, faces_dir, output=out, classifier=classifier, detector=detector)
    rows = _read_csv(out)
    assert list(rows[0]) == predict.csv_columns(CLASS_NAMES)
    counts = {}
    for row in rows:
        counts[row["source"].rsplit("/", 1)[-1]] = counts.get(row["source"].rsplit("/", 1)[-1], 0) + 1
    assert counts == EXPECTED_FACES
    assert summary["num_images"] == 4 and summary["num_faces"] == 12 and not summary["failed"]
    _check_probabilities(rows)
    for row in rows:
        assert row["frame"] == "0" and float(row["timestamp_s"]) == 0.0 and row["smoothed_label"] == ""
        assert int(row["w"]) >= 20 and int(row["h"]) >= 20


def test_corrupt_image_in_folder_is_skipped_and_counted(classifier, detector, faces_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "justin.jpg").write_bytes((faces_dir / "fer_justin.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image")
    summary = predict.predict(None, folder, output=tmp_path / "p.csv", classifier=classifier,
                              detector=detector)
    assert summary["num_images"] == 1 and summary["num_faces"] == 1
    assert [p.rsplit("/", 1)[-1] for p, _ in summary["failed"]] == ["broken.jpg"]
    # The same file alone is an error that names it.
    with pytest.raises(ValueError, match="broken.jpg"):
        predict.predict(None, folder / "broken.jpg", classifier=classifier, detector=detector)


def test_faces_none_on_crops(classifier, faces_dir, tmp_path):
    photo = faces.read_image_rgb(faces_dir / "fer_justin.jpg")
    folder = tmp_path / "crops"
    folder.mkdir()
    for i, size in enumerate((112, 80)):
        cv2.imwrite(str(folder / f"crop{i}.png"), cv2.cvtColor(cv2.resize(photo, (size, size)),
                                                                cv2.COLOR_RGB2BGR))
    summary = predict.predict(None, folder, output=tmp_path / "c.csv", faces="none",
                              classifier=classifier)
    rows = _read_csv(tmp_path / "c.csv")
    assert len(rows) == 2 and summary["num_faces"] == 2
    assert [(r["x"], r["y"], r["w"], r["h"]) for r in rows] == [("0", "0", "112", "112"), ("0", "0", "80", "80")]
    _check_probabilities(rows)
    # The 112 crop is fed as is: its probabilities are the classifier's on the image.
    crop = cv2.cvtColor(cv2.imread(str(folder / "crop0.png")), cv2.COLOR_BGR2RGB)
    expected = classifier.predict_probabilities(crop[None])[0]
    np.testing.assert_allclose([float(rows[0][c]) for c in PROB_COLUMNS], expected, atol=1e-6)


def test_video_rows_timestamps_abaw_file_and_annotation(classifier, detector, faces_dir, tmp_path):
    fps, size = 10.0, 160
    photo = cv2.resize(faces.read_image_rgb(faces_dir / "fer_justin.jpg"), (size, size))
    has_face = [True] * 5 + [False] * 3 + [True] * 4 + [False] * 2 + [True] * 3
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for face in has_face:
        writer.write(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR) if face else np.full((size, size, 3), 60, np.uint8))
    writer.release()

    out, abaw, annotated = tmp_path / "clip.csv", tmp_path / "abaw", tmp_path / "annotated.mp4"
    summary = predict.predict(None, path, output=out, smooth_window=3, abaw_submission_dir=abaw,
                              annotated_video=annotated, batch_size=4, classifier=classifier,
                              detector=detector, progress=False)
    rows = _read_csv(out)
    face_frames = [i for i, f in enumerate(has_face) if f]
    assert [int(r["frame"]) for r in rows] == face_frames  # one face per face frame
    np.testing.assert_allclose([float(r["timestamp_s"]) for r in rows], np.array(face_frames) / fps,
                               atol=1e-6)
    _check_probabilities(rows)
    assert all(r["smoothed_label"] in CLASS_NAMES for r in rows)
    lines = (abaw / "clip.txt").read_text().splitlines()
    assert lines[0] == ",".join(CLASS_NAMES)
    assert len(lines) == 1 + len(has_face)
    # Recomputed from the CSV: gaps filled from neighbours, then a 3-frame mean.
    probs = np.full((len(has_face), 7), np.nan)
    for r in rows:
        probs[int(r["frame"])] = [float(r[c]) for c in PROB_COLUMNS]
    expected = submission.labels_from_probabilities(probs, has_face, smooth_window=3)
    assert [int(v) for v in lines[1:]] == expected.tolist()
    assert [r["smoothed_label"] for r in rows] == [CLASS_NAMES[expected[i]] for i in face_frames]
    result = summary["videos"][str(path)]
    assert result.num_frames == len(has_face) and result.frames_with_face == len(face_frames)
    from fer_tf import video  # pylint: disable=import-outside-toplevel
    assert video.count_frames(annotated) == len(has_face)
    # One person: one track through the gaps (shorter than --track_gap).
    assert {r["track_id"] for r in rows} == {"0"}
    assert {r["box_source"] for r in rows} <= {"detected", "tracked"}
    timeline = cv2.imread(str(tmp_path / "clip.clip.timeline.png"))
    assert timeline is not None and timeline.shape[1] == 1000  # 10 inches at 100 dpi
    assert str(tmp_path / "clip.clip.timeline.png") in summary["outputs"]


def test_plots_off_and_label_counts(classifier, detector, faces_dir, tmp_path):
    predict.predict(None, faces_dir / "fer_justin.jpg", output=tmp_path / "a.csv",
                    classifier=classifier, detector=detector, plots=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]
    summary = predict.predict(None, faces_dir, output=tmp_path / "b.csv", classifier=classifier,
                              detector=detector)
    chart = cv2.imread(str(tmp_path / "b.labels.png"))
    assert chart is not None and str(tmp_path / "b.labels.png") in summary["outputs"]
    (tmp_path / "c.labels.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--plots"):  # an existing chart is kept
        predict.predict(None, faces_dir, output=tmp_path / "c.csv", classifier=classifier,
                        detector=detector)
    assert (tmp_path / "c.labels.png").read_bytes() == b"x" and not (tmp_path / "c.csv").exists()


def test_command_line(model_path, faces_dir, tmp_path):
    """`python -m fer_tf.predict` end to end on one photo (flags, CSV on disk)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    out = tmp_path / "cli.csv"
    done = subprocess.run(
        [sys.executable, "-m", "fer_tf.predict", f"--model={model_path}",
         f"--input={faces_dir / 'pyfeat_multi_face.jpg'}", f"--output={out}", "--batch_size=4"],
        capture_output=True, text=True, timeout=300, check=False,
        cwd=str(pathlib.Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _read_csv(out)
    assert len(rows) == EXPECTED_FACES["pyfeat_multi_face.jpg"]
    _check_probabilities(rows)


def test_outputs_never_replace_inputs_the_model_or_existing_files(tmp_path, faces_dir,
                                                                 classifier):
    photo = tmp_path / "v.jpg"
    photo.write_bytes((faces_dir / "fer_justin.jpg").read_bytes())
    before = photo.read_bytes()
    with pytest.raises(ValueError, match="--output=.*v.jpg is also an input"):
        predict.predict(None, str(photo), output=str(photo), classifier=classifier)
    with pytest.raises(ValueError, match="is also an input"):
        predict.predict(None, str(photo), output=classifier.path, classifier=classifier)
    assert photo.read_bytes() == before
    existing = tmp_path / "old.csv"
    existing.write_text("keep me\n")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        predict.predict(None, str(photo), output=str(existing), classifier=classifier)
    assert existing.read_text() == "keep me\n"
    predict.predict(None, str(photo), output=str(existing), classifier=classifier,
                    faces="none", overwrite=True)
    assert existing.read_text().startswith("source,")


def test_output_under_a_file_fails_before_any_work(tmp_path, faces_dir, classifier):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder\n")
    with pytest.raises(ValueError, match="results is a file, not a folder"):
        predict.predict(None, str(faces_dir), output=str(blocker / "p.csv"), classifier=classifier)


def test_inputs_without_a_face_are_reported(tmp_path, faces_dir, classifier, detector):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "face.jpg").write_bytes((faces_dir / "fer_justin.jpg").read_bytes())
    cv2.imwrite(str(folder / "wall.png"), np.full((120, 160, 3), 128, np.uint8))
    summary = predict.predict(None, str(folder), classifier=classifier, detector=detector)
    assert summary["num_images"] == 2 and summary["num_faces"] == 1
    assert summary["without_face"] == [str(folder / "wall.png")]
