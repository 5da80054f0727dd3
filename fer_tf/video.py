"""Video input and output with OpenCV: streaming decode and annotated output.

Frames are decoded one at a time and handed out in batches, so memory stays constant
(one batch of frames) whatever the video's length. Frame k's timestamp is k / fps:
ABAW's files have one line per frame index, and container timestamps of some
formats are unreliable, so the index is the reference.
"""

import os
import pathlib
import tempfile
from typing import Iterable, Iterator, NamedTuple, Sequence, Tuple

import cv2
import numpy as np
from absl import logging


class VideoInfo(NamedTuple):
    """What the container says: frame count (OpenCV's estimate), rate and size."""

    frame_count: int
    fps: float
    width: int
    height: int


def _open(path) -> cv2.VideoCapture:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise ValueError(
            f"cannot open video {path}: unreadable, corrupt or in a format OpenCV's FFmpeg cannot read"
        )
    return capture


def video_info(path) -> VideoInfo:
    """Frame count, frames per second, width and height of a video file.

    The frame count is OpenCV's (CAP_PROP_FRAME_COUNT, the count ABAW teams used); it
    is read from the container and can be off for broken files; `count_frames`
    decodes to count exactly.

    Raises:
      FileNotFoundError: no such file.
      ValueError: OpenCV cannot open it, or it reports no valid frame rate.
    """
    capture = _open(path)
    try:
        info = VideoInfo(
            frame_count=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            fps=float(capture.get(cv2.CAP_PROP_FPS)),
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        capture.release()
    if not info.fps > 0 or not np.isfinite(info.fps):
        raise ValueError(f"video {path} reports frame rate {info.fps}: cannot compute timestamps")
    return info


def iter_video_frames(path, batch_size: int = 32) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decodes a video as a stream of batches of RGB frames.

    Args:
      path: video file (anything OpenCV's FFmpeg reads: mp4, avi, mkv, ...).
      batch_size: frames per batch; the last batch may be shorter.

    Yields:
      (indices int64 [B], timestamps float64 [B] in seconds = index / fps,
       frames uint8 [B, H, W, 3] RGB).

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file cannot be opened or not even its first frame decodes.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Checked here, not in the generator, so a bad file fails at the call.
    info = video_info(path)
    return _frames(path, int(batch_size), info)


def _frames(path, batch_size: int, info: VideoInfo):
    fps, reported = info.fps, info.frame_count
    capture = _open(path)
    index = 0
    try:
        batch = []
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
            if len(batch) == batch_size:
                yield _batch(index, batch, fps)
                batch = []
        if index == 0:
            raise ValueError(f"video {path}: no frame could be decoded (corrupt or empty video)")
        if batch:
            yield _batch(index, batch, fps)
    finally:
        capture.release()
    if reported > 0 and index != reported:
        logging.warning("Video %s: decoded %d frames, the container reports %d.", path, index, reported)


def _batch(end: int, frames, fps: float):
    indices = np.arange(end - len(frames), end, dtype=np.int64)
    return indices, indices / fps, np.stack(frames)


def count_frames(path) -> int:
    """Exact number of decodable frames (decodes the whole video; slower than video_info)."""
    capture = _open(path)
    count = 0
    try:
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count


# Colours (RGB) of the drawn boxes and labels.
_BOX_COLOUR = (0, 255, 0)
_TEXT_COLOUR = (0, 0, 0)


def draw_annotations(frame_rgb: np.ndarray, boxes: Sequence, labels: Sequence[str]) -> np.ndarray:
    """A copy of the frame with each box drawn and its label written above it.

    Args:
      frame_rgb: uint8 [H, W, 3].
      boxes: (x, y, w, h, ...) per face (e.g. fer_tf.faces.Box).
      labels: one text per box, e.g. "Happiness 0.93".
    """
    if len(boxes) != len(labels):
        raise ValueError(f"got {len(boxes)} boxes but {len(labels)} labels")
    out = np.ascontiguousarray(frame_rgb).copy()
    # At least 2 px: 1-px lines smear under 4:2:0 chroma subsampling in mp4.
    thickness = max(2, round(min(out.shape[:2]) / 300))
    scale = max(0.4, min(out.shape[:2]) / 800)
    for box, label in zip(boxes, labels):
        x, y, w, h = (int(v) for v in box[:4])
        cv2.rectangle(out, (x, y), (x + w, y + h), _BOX_COLOUR, thickness)
        (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(y - th - baseline, 0)
        cv2.rectangle(out, (x, top), (x + tw, top + th + baseline), _BOX_COLOUR, cv2.FILLED)
        cv2.putText(out, label, (x, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, _TEXT_COLOUR, thickness,
                    cv2.LINE_AA)
    return out


class AnnotatedVideoWriter:
    """Writes RGB frames with boxes and labels to an mp4 (mp4v codec), atomically.

    Frames go to a temporary file beside `path`, renamed to `path` on a clean
    `close()` (or leaving the `with` block without an exception), so a crash never
    leaves a half-written video under the final name.

    Args:
      path: output file; ".mp4" is the intended container.
      fps: frame rate of the output.
      width, height: frame size; every frame must have it.
    """

    def __init__(self, path, fps: float, width: int, height: int):
        self.path = pathlib.Path(path)
        self.size = (int(width), int(height))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix or ".mp4",
                                         dir=self.path.parent)
        os.close(fd)
        self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), self.size)
        if not self._writer.isOpened():
            os.unlink(self._tmp)
            raise ValueError(f"OpenCV cannot write an mp4v video to {self.path} ({width}x{height} at {fps} fps)")
        self.frames_written = 0

    def write(self, frame_rgb: np.ndarray, boxes: Sequence = (), labels: Sequence[str] = ()) -> None:
        """Appends one frame, annotated with `boxes` and `labels`."""
        if frame_rgb.shape[:2] != (self.size[1], self.size[0]):
            raise ValueError(f"frame of shape {frame_rgb.shape} does not match the video size {self.size} (w, h)")
        annotated = draw_annotations(frame_rgb, boxes, labels)
        self._writer.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> pathlib.Path:
        """Finishes the file and moves it to its final name."""
        self._writer.release()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drops the partial file."""
        self._writer.release()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_annotated_video(
    path, frames: Iterable[np.ndarray], fps: float,
    annotations: Iterable[Tuple[Sequence, Sequence[str]]],
) -> pathlib.Path:
    """Writes frames with their (boxes, labels) drawn, as an mp4v video.

    Args:
      path: output .mp4 file (written atomically).
      frames: uint8 RGB frames [H, W, 3], all the same size.
      fps: output frame rate (use the input video's).
      annotations: per frame, (boxes, labels); an empty pair for frames without a face.

    Returns:
      The path written.
    """
    writer = None
    try:
        for frame, (boxes, labels) in zip(frames, annotations, strict=True):
            if writer is None:
                writer = AnnotatedVideoWriter(path, fps, frame.shape[1], frame.shape[0])
            writer.write(frame, boxes, labels)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is None:
        raise ValueError(f"no frames to write to {path}")
    return writer.close()


def write_camera_pan(photo_rgb: np.ndarray, path, frames: int, width: int = 640,
                     height: int = 360, fps: float = 25.0) -> pathlib.Path:
    """Writes a video of a slow pan and zoom over a photo: a moving camera over real
    faces, for the tracking tests and the prediction benchmark (mp4v)."""
    h0, w0 = photo_rgb.shape[:2]
    with AnnotatedVideoWriter(path, fps, width, height) as writer:
        for t in range(frames):
            zoom = 1.0 + 0.15 * np.sin(t / 12)
            cx, cy = w0 / 2 + 0.1 * w0 * np.sin(t / 9), h0 / 2
            crop_w = w0 / zoom
            crop_h = crop_w * height / width
            matrix = np.float32([[width / crop_w, 0, -(cx - crop_w / 2) * width / crop_w],
                                 [0, height / crop_h, -(cy - crop_h / 2) * height / crop_h]])
            writer.write(cv2.warpAffine(photo_rgb, matrix, (width, height)))
    return pathlib.Path(path)
