"""Predict expressions in photos, folders and videos: detect faces, crop, classify.

    python -m fer_tf.predict --model=WORKDIR|MODEL.keras|SAVED_MODEL_DIR \\
        --input=IMAGE|FOLDER|VIDEO [--output=predictions.csv] [--faces=detect|none] \\
        [--smooth_window=K] [--abaw_submission_dir=DIR] [--annotated_video=OUT.mp4] \\
        [--batch_size=32]

Faces are found with MTCNN (`fer_tf.faces.FaceDetector`; weights ship in the mtcnn
wheel, nothing is downloaded), cropped square with the training crops' margin, and
classified in batches. In videos the detector runs every ``--detect_every`` frames
(default 5) and optical flow moves the boxes in between (`fer_tf.tracking`); a lost
face, or a frame with no face to follow, is detected at once. ``--faces=none``
treats each image/frame as one face crop (e.g. Aff-Wild2's cropped_aligned images).

Output CSV (`csv_columns`), one row per face per frame (photos are frame 0, time 0):
``source, frame, timestamp_s, face, track_id, x, y, w, h, detection_score, box_source,
p_Neutral .. p_Surprise, label, smoothed_label``. ``face`` numbers the faces of a frame;
``track_id`` (videos) follows one person across frames (IoU matching; a face unseen for
more than ``--track_gap`` frames starts a new track); ``box_source`` says whether the
detector found the box or the flow moved it (``detection_score`` is then that of the
detection it came from); ``label`` is the argmax class name; ``smoothed_label`` (videos)
is the label along the face's own track after gaps are filled from neighbours and
probabilities averaged over ``--smooth_window`` frames (window 1: equals ``label``).
Frames without a face have no row. With ``--output``, a timeline PNG per video and a
label-count chart of the images are written beside the CSV (`plot_paths`).

Videos are decoded as a stream (`fer_tf.video.iter_video_frames`), so memory does not
grow with the video's length (only the small per-face rows are kept).
``--abaw_submission_dir`` writes ``<video name>.txt`` per video in the ABAW test
format: the header and one label per decoded frame from the main track (the longest;
the log names it), frames without it filled from their neighbours (ABAW scores one
subject per file; split two-person videos into _left/_right crops to score both).
``--annotated_video`` re-reads the (single) input video and draws every box with its
track id and label.

Bad input: a single unreadable image or video raises an error naming it; in a
folder, unreadable files are logged, counted and skipped. Frames without a face are
normal.
"""

import csv
import dataclasses
import io
import os
import pathlib
import sys
import time
from typing import List, Optional, Sequence

import cv2
import numpy as np
import tqdm
from absl import app, flags, logging

from fer_tf import faces as faces_lib
from fer_tf import atomic, cli, compute_precision, inference, pretrained, submission
from fer_tf import temporal, tracking
from fer_tf import plots as plots_lib
from fer_tf import video as video_lib
from fer_tf import model as model_lib
from fer_tf.data import pipeline

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
FACE_MODES = ("detect", "none")
# Crop margin per side for models that do not carry their own (files older than the
# input contract): a square window, 20% of the box's longer side added per side
# (fer_tf.faces.square_box), roughly the framing of Aff-Wild2's aligned crops. The ExpW
# reader's crops differ: the annotated rectangle itself unless --margin is given
# (fer_tf.data.expw.crop_box); a model stores the margin its training data calls for.
DEFAULT_MARGIN = 0.2
# Videos: detector every 5th frame, optical flow between (chosen on the benchmark's
# boxes: mean IoU against per-frame detection, see the README); a face unseen for a
# second (25 frames) gets a new track id.
DEFAULT_DETECT_EVERY = 5
DEFAULT_TRACK_GAP = 25


def csv_columns(class_names: Sequence[str]) -> List[str]:
    """The prediction CSV's header for a label space."""
    return (["source", "frame", "timestamp_s", "face", "track_id", "x", "y", "w", "h",
             "detection_score", "box_source"]
            + [f"p_{name}" for name in class_names] + ["label", "smoothed_label"])


@dataclasses.dataclass
class FaceRow:
    """One face in one frame (or photo) and its class probabilities."""

    source: str
    frame: int
    timestamp: float
    face: int
    box: faces_lib.Box
    probabilities: np.ndarray
    smoothed_label: Optional[int] = None
    track_id: Optional[int] = None  # videos: the same person across frames
    smoothed_probabilities: Optional[np.ndarray] = None  # videos: along the track
    box_source: str = "detected"  # videos: "detected" or "tracked" (moved by optical flow)

    @property
    def label(self) -> int:
        return int(np.argmax(self.probabilities))


@dataclasses.dataclass
class VideoPrediction:
    """What `predict_video` found: rows and the per-frame labels of the main track."""

    rows: List[FaceRow]
    num_frames: int
    fps: float
    frame_labels: np.ndarray  # [num_frames] the main track's filled + smoothed labels
    frames_with_face: int
    main_track: Optional[int] = None  # the track of frame_labels (None: no face)
    detections: int = 0  # frames the detector ran on


class FacePredictor:
    """Detects (or takes whole images as) faces, crops them and classifies them in batches.

    Args:
      classifier: a `fer_tf.inference.Classifier`.
      detector: a `fer_tf.faces.FaceDetector`, or None: every image is one face crop.
      margin: crop enlargement per side (fraction of the box); None: the classifier's
        own (stored in its model), else DEFAULT_MARGIN.
    """

    def __init__(self, classifier, detector=None, margin: Optional[float] = None):
        self.classifier = classifier
        self.detector = detector
        if margin is None:
            margin = classifier.crop_margin
        self.margin = DEFAULT_MARGIN if margin is None else margin

    def _whole_image_crop(self, image: np.ndarray) -> np.ndarray:
        size = self.classifier.input_size
        if image.shape[:2] == (size, size):
            return image
        # Same resize as the training pipeline's decode (bilinear, antialiased).
        return pipeline.resize_uint8(image, size).numpy()

    def detect(self, images: Sequence[np.ndarray]) -> List[List[faces_lib.Box]]:
        """The face boxes of each image (the whole image when there is no detector)."""
        if self.detector is None:
            return [[faces_lib.Box(0, 0, image.shape[1], image.shape[0], 1.0)] for image in images]
        return self.detector.detect_batch(list(images))

    def classify(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[faces_lib.Box]]):
        """Probabilities of the given faces: per image, a list of (Box, float32 [C])."""
        if self.detector is None:
            crops = [self._whole_image_crop(image)[None] for image in images]
        else:
            crops = [faces_lib.crop_faces(image, b, self.margin, self.classifier.input_size)
                     for image, b in zip(images, boxes) if b]
        if crops:
            probs = self.classifier.predict_probabilities(np.concatenate(crops))
        out, k = [], 0
        for image_boxes in boxes:
            out.append([(box, probs[k + i]) for i, box in enumerate(image_boxes)])
            k += len(image_boxes)
        return out

    def predict_frames(self, images: Sequence[np.ndarray]):
        """Faces and probabilities of a batch of RGB images (frames or photos).

        Args:
          images: uint8 RGB [H, W, 3] images (sizes may differ).

        Returns:
          per image, a list of (Box, probabilities float32 [C]) in reading order.
        """
        return self.classify(images, self.detect(images))


class _Progress:
    """A tqdm bar with frames/s (none when disabled), and the overall rate."""

    def __init__(self, total: Optional[int], description: str, enabled: bool = True):
        self.done = 0
        self.start = time.time()
        self.bar = tqdm.tqdm(total=total or None, desc=description, unit="frame",
                             file=sys.stderr, dynamic_ncols=True) if enabled else None

    def update(self, n: int):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    @property
    def rate(self) -> float:
        return self.done / max(time.time() - self.start, 1e-9)


def predict_video(predictor: FacePredictor, path, batch_size: int = 32, smooth_window: int = 1,
                  progress: bool = True, detect_every: int = 1,
                  track_gap: int = 25) -> VideoPrediction:
    """Streams a video through detection (or tracking), classification and smoothing.

    Args:
      predictor: a `FacePredictor`.
      path: video file.
      batch_size: frames decoded, detected and classified together.
      smooth_window: odd window (frames) for each track's smoothing.
      progress: show a progress bar / log lines with frames/s.
      detect_every: run the detector every this many frames and move the boxes with
        optical flow in between (`fer_tf.tracking.FaceFollower`); 1: every frame.
      track_gap: a face unseen for more than this many frames starts a new track.

    Returns:
      A `VideoPrediction`; every row carries its ``track_id`` and ``smoothed_label``.

    Raises:
      FileNotFoundError / ValueError: missing, unreadable or undecodable video
        (the message names it).
    """
    source = os.fspath(path)
    info = video_lib.video_info(source)
    frames_iter = video_lib.iter_video_frames(source, batch_size)
    every = detect_every if predictor.detector is not None else 1  # crops: nothing to track
    follower = tracking.FaceFollower(predictor.detect, every, track_gap)
    rows, num_frames = [], 0
    bar = _Progress(info.frame_count, os.path.basename(source), progress)
    try:
        for indices, timestamps, frames in frames_iter:
            followed = follower.follow(indices, frames)
            classified = predictor.classify(frames, [boxes for boxes, _, _ in followed])
            for index, stamp, faces, (_, kinds, ids) in zip(indices, timestamps, classified,
                                                             followed):
                rows += [FaceRow(source, int(index), float(stamp), k, box, probs,
                                 track_id=ids[k], box_source=kinds[k])
                         for k, (box, probs) in enumerate(faces)]
            num_frames += len(indices)
            bar.update(len(indices))
    finally:
        bar.close()
    with_face = len({row.frame for row in rows})
    logging.info("%s: %d frames, %d with a face, %d faces in %d tracks, detector on %d frames, "
                 "%.1f frames/s", source, num_frames, with_face, len(rows),
                 len({row.track_id for row in rows}), follower.detections, bar.rate)
    num_classes = len(predictor.classifier.class_names)
    main, frame_labels = _smooth_tracks(rows, num_frames, smooth_window, num_classes)
    if main is not None:
        logging.info("%s: main track %d (the longest: %d of %d frames) gives the per-frame "
                     "labels", source, main, sum(r.track_id == main for r in rows), num_frames)
    return VideoPrediction(rows, num_frames, info.fps, frame_labels, with_face, main,
                           follower.detections)


def _main_track(rows) -> Optional[int]:
    """The longest track (most frames); ties go to the larger mean face area."""
    if not rows:
        return None
    frames, areas = {}, {}
    for row in rows:
        frames[row.track_id] = frames.get(row.track_id, 0) + 1
        areas[row.track_id] = areas.get(row.track_id, 0) + row.box.w * row.box.h
    return max(frames, key=lambda t: (frames[t], areas[t] / frames[t], -t))


def _smooth_tracks(rows, num_frames: int, window: int, num_classes: int):
    """Sets each row's ``smoothed_label`` (fill + smoothing along its own track) and
    returns (main track id, its filled + smoothed label for every frame)."""
    by_track = {}
    for i, row in enumerate(rows):
        by_track.setdefault(row.track_id, []).append(i)
    for indices in by_track.values():
        frames = np.array([rows[i].frame for i in indices])
        first = frames.min()
        sequence = np.full((frames.max() - first + 1, num_classes), np.nan, np.float32)
        sequence[frames - first] = [rows[i].probabilities for i in indices]
        present = ~np.isnan(sequence[:, 0])
        smoothed = temporal.smooth_video_predictions(sequence, present, window)
        for i, frame in zip(indices, frames):
            rows[i].smoothed_probabilities = smoothed[frame - first].astype(np.float32)
            rows[i].smoothed_label = int(np.argmax(smoothed[frame - first]))
    main = _main_track(rows)
    sequence = np.full((num_frames, num_classes), np.nan, np.float32)
    for i in by_track.get(main, []):
        sequence[rows[i].frame] = rows[i].probabilities
    present = ~np.isnan(sequence[:, 0])
    smoothed = temporal.smooth_video_predictions(sequence, present, window)
    return main, np.argmax(smoothed, axis=1).astype(np.int64)


def predict_images(predictor: FacePredictor, paths: Sequence, batch_size: int = 32,
                   skip_errors: bool = False):
    """Faces and probabilities of photos, classified in batches.

    Args:
      predictor: a `FacePredictor`.
      paths: image files.
      batch_size: images detected and classified together.
      skip_errors: log and skip unreadable files (folder mode) instead of raising.

    Returns:
      (rows, failed): `FaceRow`s (frame 0, time 0) and a list of (path, reason).
    """
    rows, failed = [], []
    for start in range(0, len(paths), batch_size):
        batch_paths, images = [], []
        for path in paths[start:start + batch_size]:
            try:
                images.append(faces_lib.read_image_rgb(path))
                batch_paths.append(os.fspath(path))
            except (ValueError, FileNotFoundError) as error:
                if not skip_errors:
                    raise
                logging.warning("skipping %s", error)
                failed.append((os.fspath(path), str(error)))
        if images:
            for path, faces in zip(batch_paths, predictor.predict_frames(images)):
                rows += [FaceRow(path, 0, 0.0, k, box, probs) for k, (box, probs) in enumerate(faces)]
    return rows, failed


def rows_to_csv(rows: Sequence[FaceRow], class_names: Sequence[str]) -> str:
    """CSV text (header + one line per face) of prediction rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_columns(class_names))
    for r in rows:
        writer.writerow(
            [r.source, r.frame, f"{r.timestamp:.6f}", r.face,
             "" if r.track_id is None else r.track_id, r.box.x, r.box.y, r.box.w, r.box.h,
             f"{r.box.score:.4f}", r.box_source] + [f"{p:.6f}" for p in r.probabilities]
            + [class_names[r.label], "" if r.smoothed_label is None else class_names[r.smoothed_label]])
    return out.getvalue()


def write_annotated_video(path, video_path, prediction: VideoPrediction, class_names,
                          smooth_window: int = 1) -> pathlib.Path:
    """Re-reads the video and writes it with every face's box, track id and label drawn
    (the track's smoothed label when smooth_window > 1, else the frame's own)."""
    by_frame = {}
    for row in prediction.rows:
        by_frame.setdefault(row.frame, []).append(row)
    writer = None
    try:
        for indices, _, frames in video_lib.iter_video_frames(video_path, 32):
            for index, frame in zip(indices, frames):
                if writer is None:
                    writer = video_lib.AnnotatedVideoWriter(path, prediction.fps, frame.shape[1],
                                                            frame.shape[0])
                rows = by_frame.get(int(index), [])
                labels = []
                for r in rows:
                    track = "" if r.track_id is None else f"#{r.track_id} "
                    if smooth_window > 1 and r.smoothed_label is not None:
                        labels.append(f"{track}{class_names[r.smoothed_label]} (K={smooth_window})")
                    else:
                        labels.append(f"{track}{class_names[r.label]} {r.probabilities[r.label]:.2f}")
                writer.write(frame, [r.box for r in rows], labels)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer.close()


def plot_paths(output, images, videos) -> dict:
    """Where the pictures go beside the CSV ``output``: a timeline per video
    (``<csv stem>.<video stem>.timeline.png``) and, for images, the label counts
    (``<csv stem>.labels.png``); keyed by video path, and "images"."""
    base = pathlib.Path(output)
    stem = base.parent / base.stem
    paths = {os.fspath(v): pathlib.Path(f"{stem}.{pathlib.Path(v).stem}.timeline.png")
             for v in videos}
    if images:
        paths["images"] = pathlib.Path(f"{stem}.labels.png")
    return paths


def _video_timeline(result: VideoPrediction, names, title) -> bytes:
    tracks = {}
    for row in result.rows:
        times, probs, labels = tracks.setdefault(row.track_id, ([], [], []))
        times.append(row.timestamp)
        probs.append(row.smoothed_probabilities)
        labels.append(row.smoothed_label)
    return plots_lib.timeline_png({t: (a, np.stack(b), c) for t, (a, b, c) in tracks.items()},
                              names, title)


def write_plots(paths: dict, image_rows, results: dict, names) -> list:
    """Writes the timelines of `plot_paths` (atomically) and returns the files written."""
    written = []
    for key, path in paths.items():
        if key == "images":
            counts = np.bincount([r.label for r in image_rows], minlength=len(names))
            data = plots_lib.label_counts_png(counts, names, f"{len(image_rows)} faces in "
                                          f"{len({r.source for r in image_rows})} images")
        elif key in results and results[key].rows:
            data = _video_timeline(results[key], names, os.path.basename(key))
        else:
            continue  # a video without a face (or unreadable) has no timeline
        written.append(atomic.write_bytes(path, data))
    return written


def list_inputs(input_path):
    """(images, videos) under a file or folder (recursive, sorted by path).

    Raises:
      FileNotFoundError: no such file or folder.
      ValueError: a file of unknown type, or a folder without images or videos.
    """
    input_path = pathlib.Path(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"input {input_path} not found (expected an image, a video or a folder)")
    if input_path.is_file():
        files = [input_path]
    else:
        files = sorted(p for p in input_path.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    if input_path.is_file() and not (images or videos):
        raise ValueError(f"{input_path}: unknown file type {input_path.suffix!r}; expected an image "
                         f"{IMAGE_EXTENSIONS} or a video {VIDEO_EXTENSIONS}")
    if not (images or videos):
        raise ValueError(f"folder {input_path} holds no image {IMAGE_EXTENSIONS} or video "
                         f"{VIDEO_EXTENSIONS} files")
    ignored = len(files) - len(images) - len(videos)
    if ignored:
        logging.info("%s: ignoring %d files that are neither images nor videos", input_path, ignored)
    return images, videos


def _check_outputs(model, input_path, images, videos, output, annotated_video,
                   abaw_submission_dir, overwrite, plots_to):
    """Refuses, before any work, outputs that would destroy an input, the model or a file."""
    protected = [input_path, *images, *videos]
    try:
        model_path = pretrained.resolve(model)
        protected += [model_path, os.path.join(model_path, model_lib.BEST_MODEL_FILE)]
    except FileNotFoundError:
        pass  # no model: loading it reports that, after these checks
    if output:
        atomic.check_output(output, protected, overwrite, "--output")
    if annotated_video:
        atomic.check_output(annotated_video, protected, overwrite, "--annotated_video")
    for path in plots_to.values():
        atomic.check_output(path, protected, overwrite, "--plots")
    if abaw_submission_dir:
        for path in videos:
            atomic.check_output(pathlib.Path(abaw_submission_dir) / f"{path.stem}.txt", protected,
                                overwrite, "--abaw_submission_dir")


def _predict_one_video(predictor, path, single, failed, batch_size, smooth_window, progress,
                       detect_every, track_gap):
    """A video's prediction; None (and a line in ``failed``) if it cannot be read, unless it
    is the only input (then the error is the user's answer)."""
    try:
        return predict_video(predictor, path, batch_size, smooth_window, progress,
                             detect_every, track_gap)
    except (ValueError, FileNotFoundError, cv2.error) as error:
        if single:
            raise
        logging.warning("skipping video %s: %s", path, error)
        failed.append((os.fspath(path), str(error)))
        return None


def _write_video_outputs(path, result, names, abaw_submission_dir, annotated_video,
                         smooth_window) -> list:
    outputs = []
    if abaw_submission_dir:
        outputs.append(submission.write_abaw_submission(
            pathlib.Path(abaw_submission_dir) / f"{path.stem}.txt", result.frame_labels, names))
    if annotated_video:
        outputs.append(write_annotated_video(annotated_video, path, result, names, smooth_window))
    return outputs


def _warn_skipped(without_face, failed, num_inputs):
    if without_face:
        logging.warning("%d of %d inputs have no face the detector found: %s", len(without_face),
                        num_inputs, ", ".join(without_face[:10]))
    if failed:
        logging.warning("%d of %d inputs could not be read and were skipped: %s", len(failed),
                        num_inputs, ", ".join(p for p, _ in failed[:10]))


def predict(model, input_path, output: Optional[str] = None, faces: str = "detect",
            smooth_window: int = 1, abaw_submission_dir: Optional[str] = None,
            annotated_video: Optional[str] = None, batch_size: int = 32,
            margin: Optional[float] = None, min_face_size: int = 20, progress: bool = True,
            classifier=None, detector=None, flip_average: bool = False,
            overwrite: bool = False, detect_every: int = DEFAULT_DETECT_EVERY,
            track_gap: int = DEFAULT_TRACK_GAP, plots: bool = True,
            precision: str = "auto") -> dict:
    """Runs prediction on an image, a video or a folder and writes the requested outputs.

    Args:
      model: None or a shipped model's name (the model inside the package), a training
        workdir, .keras file or SavedModel directory (ignored when `classifier` is given).
      input_path: image, video or folder (searched recursively).
      output: CSV file to write (atomically); None: no CSV.
      faces: "detect" (MTCNN) or "none" (inputs are face crops).
      smooth_window: odd window in frames for the videos' largest-face track.
      abaw_submission_dir: write one ABAW file per video here.
      annotated_video: write the input video (a single video only) with boxes and labels.
      batch_size: frames/images per batch (detection and classification).
      margin: crop enlargement per side; None: the model's own (stored at training),
        else DEFAULT_MARGIN.
      min_face_size: smallest face side searched for, in pixels.
      progress: progress bar / log lines for videos.
      classifier, detector: already loaded objects to reuse (optional).
      flip_average: average each face's probabilities with its mirror image's.
      overwrite: replace existing output files (without it an existing output is an
        error); an output that is an input or the model is always refused.
      detect_every: videos: run the detector every this many frames, optical flow
        moves the boxes in between (1: detect every frame).
      track_gap: videos: frames a face may go unseen and keep its track id.
      plots: with ``output``, also write a timeline PNG per video and a label-count
        chart of the images beside it (`plot_paths`).
      precision: "auto", "float32" or "bfloat16" (`fer_tf.inference.load_classifier`).

    Returns:
      dict(rows, num_images, num_videos, num_faces, failed (list of (path, reason)),
      without_face (inputs in which no face was found), videos {path: VideoPrediction},
      outputs (list of files written)).

    Raises:
      ValueError / FileNotFoundError: bad arguments, or an unreadable single input.
    """
    if faces not in FACE_MODES:
        raise ValueError(f"faces must be one of {FACE_MODES}, got {faces!r}")
    temporal.check_window(smooth_window, "smooth_window")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(detect_every) < 1 or int(track_gap) < 0:
        raise ValueError(f"--detect_every must be >= 1 and --track_gap >= 0, got "
                         f"{detect_every} and {track_gap}")
    images, videos = list_inputs(input_path)
    single = os.path.isfile(input_path)
    if annotated_video and not (single and videos):
        raise ValueError(f"--annotated_video needs a single video as input, got {input_path}")
    plots_to = plot_paths(output, images, videos) if output and plots else {}
    _check_outputs(model if classifier is None else classifier.path, input_path, images, videos,
                   output, annotated_video, abaw_submission_dir, overwrite, plots_to)
    if classifier is None:
        logging.info("fer_tf.predict: model %s", pretrained.describe(model))
        classifier = inference.load_classifier(model, batch_size=batch_size,
                                               flip_average=flip_average, precision=precision)
    if detector is None and faces == "detect":
        detector = faces_lib.FaceDetector(min_face_size=min_face_size)
    predictor = FacePredictor(classifier, detector if faces == "detect" else None, margin)
    names = classifier.class_names

    rows, failed = predict_images(predictor, images, batch_size, skip_errors=not single)
    image_rows = list(rows)
    images_read = len(images) - len(failed)
    seen = {row.source for row in rows} | {path for path, _ in failed}
    without_face = [os.fspath(p) for p in images if os.fspath(p) not in seen]
    results, outputs = {}, []
    for path in videos:
        result = _predict_one_video(predictor, path, single, failed, batch_size, smooth_window,
                                    progress, detect_every, track_gap)
        if result is None:
            continue
        results[os.fspath(path)] = result
        rows += result.rows
        if not result.frames_with_face:
            without_face.append(os.fspath(path))
        outputs += _write_video_outputs(path, result, names, abaw_submission_dir,
                                        annotated_video, smooth_window)
    if abaw_submission_dir and not videos:
        logging.warning("--abaw_submission_dir is for videos; %s has none, nothing written", input_path)
    _warn_skipped(without_face if faces == "detect" else [], failed, len(images) + len(videos))
    if output:
        outputs.append(atomic.write_text(output, rows_to_csv(rows, names)))
    outputs += write_plots(plots_to, image_rows, results, names)
    return {
        "rows": rows,
        "class_names": names,
        "num_images": images_read,
        "num_videos": len(results),
        "num_faces": len(rows),
        "failed": failed,
        "without_face": without_face,
        "videos": results,
        "outputs": [os.fspath(p) for p in outputs],
    }


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model", None, pretrained.model_flag_help(
        "training workdir, .keras file or exported SavedModel dir"))
    flags.DEFINE_string("input", None, "Image, video or folder (searched recursively).")
    flags.DEFINE_string("output", None, "CSV file to write; default: CSV on standard output.")
    flags.DEFINE_enum("faces", "detect", FACE_MODES, "detect: find faces with MTCNN; none: inputs "
                      "are face crops already.")
    flags.DEFINE_integer("smooth_window", 1, "Odd window (frames) to average the largest face's "
                         "probabilities over in videos; 1 = none.")
    flags.DEFINE_string("abaw_submission_dir", None, "Write one ABAW test-format file per video here.")
    flags.DEFINE_string("annotated_video", None, "Write the input video with boxes and labels (mp4).")
    flags.DEFINE_integer("batch_size", 32, "Frames / images per batch.")
    flags.DEFINE_float("margin", None, "Crop enlargement per side, fraction of the box "
                       f"(default: the model's own, else {DEFAULT_MARGIN}).")
    flags.DEFINE_bool("overwrite", False, "Replace existing output files (never an input or "
                      "the model).")
    flags.DEFINE_bool("flip_average", False, "Average each face's probabilities with its "
                      "mirror image's (test-time augmentation, twice the compute).")
    flags.DEFINE_enum("precision", "auto", compute_precision.PRECISIONS,
                      compute_precision.FLAG_HELP)
    flags.DEFINE_integer("min_face_size", 20, "Smallest face side (pixels) searched for.")
    flags.DEFINE_integer("detect_every", DEFAULT_DETECT_EVERY, "Videos: run the face "
                         "detector every N frames and move the boxes with optical flow in "
                         "between (re-detecting where a face is lost); 1 = every frame.")
    flags.DEFINE_integer("track_gap", DEFAULT_TRACK_GAP, "Videos: frames a face may go "
                         "unseen and keep its track_id.")
    flags.DEFINE_bool("plots", True, "With --output: a timeline PNG per video (smoothed "
                      "probabilities and labels per track) and a label-count chart of the "
                      "images, beside the CSV.")
    flags.mark_flags_as_required(["input"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    summary = predict(FLAGS.model, FLAGS.input, FLAGS.output, FLAGS.faces,
                      FLAGS.smooth_window, FLAGS.abaw_submission_dir, FLAGS.annotated_video,
                      FLAGS.batch_size, FLAGS.margin, FLAGS.min_face_size,
                      flip_average=FLAGS.flip_average, overwrite=FLAGS.overwrite,
                      detect_every=FLAGS.detect_every, track_gap=FLAGS.track_gap,
                      plots=FLAGS.plots, precision=FLAGS.precision)
    if not FLAGS.output:
        sys.stdout.write(rows_to_csv(summary["rows"], summary["class_names"]))
    logging.info("%d images, %d videos, %d faces, %d inputs without a face, %d inputs skipped; "
                 "wrote %s", summary["num_images"], summary["num_videos"], summary["num_faces"],
                 len(summary["without_face"]), len(summary["failed"]),
                 summary["outputs"] or "nothing")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.predict")
