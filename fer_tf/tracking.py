"""Faces across video frames: boxes moved between detections, and stable track ids.

- `FlowBoxTracker` moves boxes from one frame to the next with pyramidal Lucas-Kanade
  optical flow on corners inside each box (the median-flow idea: the median point
  displacement shifts the box, the median ratio of point distances scales it; points
  whose forward-backward error is large are discarded). OpenCV's own median-flow and
  KCF trackers live in opencv-contrib only, and the trackers in opencv-python need
  model files (Nano, ViT, DaSiamRPN) or cost tens of ms per face (MIL); LK flow is in
  OpenCV's core and costs about a millisecond per frame here.
- `TrackAssigner` gives each face a ``track_id`` that follows it: boxes are matched to
  live tracks by IoU with the Hungarian method (scipy's linear_sum_assignment), a
  match needs IoU >= ``min_iou``, and a track ends after ``max_gap`` frames unseen.
"""

import dataclasses
from typing import List, Optional, Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from fer_tf.faces import Box

# Corners per box for the flow, their spacing, and the forward-backward error (pixels)
# above which a point is not trusted; fewer than _MIN_POINTS good points = lost.
_MAX_CORNERS = 40
_MIN_DISTANCE = 4
_MAX_FB_ERROR = 1.0
_MIN_POINTS = 6
_LK = dict(winSize=(15, 15), maxLevel=3,
           criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))


def iou_matrix(boxes_a: Sequence[Box], boxes_b: Sequence[Box]) -> np.ndarray:
    """Intersection over union of every pair: float64 [len(a), len(b)]."""
    if not boxes_a or not boxes_b:
        return np.zeros((len(boxes_a), len(boxes_b)))
    a = np.array([[b.x, b.y, b.x + b.w, b.y + b.h] for b in boxes_a], np.float64)
    b = np.array([[b.x, b.y, b.x + b.w, b.y + b.h] for b in boxes_b], np.float64)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_boxes(previous: Sequence[Box], current: Sequence[Box], min_iou: float = 0.3):
    """Pairs (i, j) of previous[i] and current[j] with the largest total IoU, each pair at
    least ``min_iou`` (the Hungarian method; unmatched boxes are left out)."""
    overlap = iou_matrix(previous, current)
    if overlap.size == 0:
        return []
    rows, cols = linear_sum_assignment(-overlap)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if overlap[i, j] >= min_iou]


def to_gray(frame_rgb: np.ndarray) -> np.ndarray:
    """The single-channel frame the flow runs on."""
    return cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)


def _corners(gray: np.ndarray, box: Box) -> Optional[np.ndarray]:
    mask = np.zeros_like(gray)
    mask[box.y:box.y + box.h, box.x:box.x + box.w] = 255
    points = cv2.goodFeaturesToTrack(gray, _MAX_CORNERS, 0.01, _MIN_DISTANCE, mask=mask)
    return None if points is None or len(points) < _MIN_POINTS else points.astype(np.float32)


def _moved_box(box: Box, before: np.ndarray, after: np.ndarray, shape) -> Box:
    """The box shifted by the median displacement and scaled by the median ratio of
    pairwise point distances, clipped to the frame."""
    shift = np.median(after - before, axis=0)
    pairs = np.triu_indices(len(before), 1)
    distance_before = np.linalg.norm(before[pairs[0]] - before[pairs[1]], axis=1)
    distance_after = np.linalg.norm(after[pairs[0]] - after[pairs[1]], axis=1)
    usable = distance_before > 1e-3
    scale = float(np.median(distance_after[usable] / distance_before[usable])) if usable.any() else 1.0
    cx, cy = box.x + box.w / 2 + shift[0], box.y + box.h / 2 + shift[1]
    w, h = box.w * scale, box.h * scale
    height, width = shape[:2]
    x0, y0 = int(round(max(cx - w / 2, 0))), int(round(max(cy - h / 2, 0)))
    x1, y1 = int(round(min(cx + w / 2, width))), int(round(min(cy + h / 2, height)))
    return Box(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0), box.score)


class FlowBoxTracker:
    """Moves face boxes from frame to frame with optical flow (see the module docstring)."""

    def __init__(self):
        self._gray = None
        self._boxes: List[Box] = []

    def start(self, gray: np.ndarray, boxes: Sequence[Box]):
        """Anchors the tracker on a frame with detected boxes."""
        self._gray, self._boxes = gray, list(boxes)

    @property
    def tracking(self) -> bool:
        """True when there are boxes to move."""
        return bool(self._boxes)

    def step(self, gray: np.ndarray) -> List[Optional[Box]]:
        """Each box moved to ``gray`` (the next frame), or None where it was lost."""
        moved = [self._move(box, gray) for box in self._boxes]
        # Lost boxes are not followed further (FaceFollower re-detects at once).
        self._gray, self._boxes = gray, [box for box in moved if box is not None]
        return moved

    def _move(self, box: Box, gray: np.ndarray) -> Optional[Box]:
        before = _corners(self._gray, box)
        if before is None:
            return None
        after, found, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, before, None, **_LK)
        back, found_back, _ = cv2.calcOpticalFlowPyrLK(gray, self._gray, after, None, **_LK)
        error = np.linalg.norm((before - back).reshape(-1, 2), axis=1)
        good = (found.ravel() == 1) & (found_back.ravel() == 1) & (error < _MAX_FB_ERROR)
        if good.sum() < _MIN_POINTS:
            return None
        moved = _moved_box(box, before.reshape(-1, 2)[good], after.reshape(-1, 2)[good], gray.shape)
        return moved if moved.w > 1 and moved.h > 1 else None


@dataclasses.dataclass
class _Track:
    track_id: int
    box: Box
    last_frame: int


class TrackAssigner:
    """Stable ids for the faces of consecutive frames.

    Args:
      max_gap: a track not seen for more than this many frames ends; a face that
        reappears later gets a new id.
      min_iou: the least overlap between a track's last box and a face to continue it.
    """

    def __init__(self, max_gap: int = 25, min_iou: float = 0.3):
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0 frames, got {max_gap}")
        self.max_gap, self.min_iou = int(max_gap), float(min_iou)
        self._live: List[_Track] = []
        self._next_id = 0

    def assign(self, frame: int, boxes: Sequence[Box]) -> List[int]:
        """The track id of each box of ``frame`` (frames in increasing order)."""
        self._live = [t for t in self._live if frame - t.last_frame <= self.max_gap + 1]
        pairs = match_boxes([t.box for t in self._live], boxes, self.min_iou)
        ids = [-1] * len(boxes)
        for i, j in pairs:
            track = self._live[i]
            track.box, track.last_frame = boxes[j], frame
            ids[j] = track.track_id
        for j, box in enumerate(boxes):
            if ids[j] < 0:
                ids[j] = self._next_id
                self._live.append(_Track(self._next_id, box, frame))
                self._next_id += 1
        return ids


class FaceFollower:
    """Face boxes and track ids for every frame of a video, detecting only every few frames.

    Frames whose index is a multiple of ``detect_every`` are detected (all of a batch's
    in one detector call); the frames between take the boxes moved by `FlowBoxTracker`,
    and a frame where a box is lost, or where there is no face to follow, is detected
    at once (then tracking restarts from it). ``detect_every=1`` detects every frame:
    the boxes are the detector's. A face that appears beside faces already followed is
    found at the next scheduled detection.

    Args:
      detect: ``frames -> [[Box, ...] per frame]`` (e.g. `FacePredictor.detect`).
      detect_every: detect every this many frames (>= 1).
      max_gap, min_iou: see `TrackAssigner`.
    """

    def __init__(self, detect, detect_every: int = 1, max_gap: int = 25, min_iou: float = 0.3):
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1 frame, got {detect_every}")
        self.detect_every = int(detect_every)
        self._detect = detect
        self._flow = FlowBoxTracker()
        self._ids = TrackAssigner(max_gap, min_iou)
        self.detections = 0  # frames the detector ran on

    def follow(self, indices: Sequence[int], frames: Sequence[np.ndarray]):
        """Per frame (in order): (boxes, sources "detected"/"tracked", track ids)."""
        due = [i for i, index in enumerate(indices) if int(index) % self.detect_every == 0]
        detected = dict(zip(due, self._detect([frames[i] for i in due]))) if due else {}
        self.detections += len(due)
        out = []
        for i, (index, frame) in enumerate(zip(indices, frames)):
            gray = to_gray(frame) if self.detect_every > 1 else None
            boxes, source = detected.get(i), "detected"
            if boxes is None:
                # No face to follow: detect (a new face must not wait for the next
                # scheduled detection); a lost face: detect again.
                moved = self._flow.step(gray) if self._flow.tracking else []
                if not moved or any(box is None for box in moved):
                    boxes = self._detect([frame])[0]
                    self.detections += 1
                else:
                    boxes, source = moved, "tracked"
            if source == "detected" and gray is not None:
                self._flow.start(gray, boxes)
            out.append((list(boxes), [source] * len(boxes), self._ids.assign(int(index), boxes)))
        return out
