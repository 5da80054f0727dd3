"""ExpW (Expression in-the-Wild) reader: ``label.lst`` boxes -> cached face crops.

Layout (docs/datasets.md)::

    image/origin/<image_name>.jpg     # full scene photos, possibly several faces each
    label/label.lst                   # one face per line, 8 space-separated fields

``label.lst`` fields: image_name face_id top left right bottom confidence label;
crop = ``img[top:bottom, left:right]``. Labels 0 angry, 1 disgust, 2 fear, 3 happy,
4 sad, 5 surprise, 6 neutral are remapped to the ABAW order with
``classes.EXPW_TO_ABAW``. Crops are written once into a cache folder (ExpW boxes are
not aligned, and cropping every epoch would waste the input pipeline's time).
"""

import collections
import concurrent.futures
import dataclasses
import os
import time
from typing import List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
import tqdm
from absl import logging

from fer_tf import atomic, classes
from fer_tf.data import examples, text

LABEL_FILES = (os.path.join("label", "label.lst"), "label.lst")
IMAGE_DIRS = (os.path.join("image", "origin"), "origin", "image")
JPEG_QUALITY = 95


class Face(NamedTuple):
    """One parsed ``label.lst`` line (box in pixels, label in ExpW order)."""

    image: str
    face_id: int
    top: int
    left: int
    right: int
    bottom: int
    confidence: float
    label: int


@dataclasses.dataclass
class ExpwReport:
    """What one read kept and dropped.

    Attributes:
      label_file: the ``label.lst`` read.
      lines: non-empty lines in the file.
      duplicates: exact duplicate lines removed.
      low_confidence: faces under ``min_confidence`` removed.
      missing_images: faces whose source photo is missing or undecodable.
      empty_boxes: faces whose box is empty after clipping to the photo.
      cropped: crops written by this read.
      cached: crops already in the cache (not redone).
      kept: faces returned.
      missing_image_names: the missing/undecodable photos (sorted).
      class_counts: kept faces per ABAW class name.
    """

    label_file: str = ""
    lines: int = 0
    duplicates: int = 0
    low_confidence: int = 0
    missing_images: int = 0
    empty_boxes: int = 0
    cropped: int = 0
    cached: int = 0
    kept: int = 0
    missing_image_names: List[str] = dataclasses.field(default_factory=list)
    class_counts: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One human-readable line."""
        per_class = ", ".join(f"{n} {c}" for c, n in self.class_counts.items())
        return (
            f"{self.kept} faces kept ({per_class}); {self.cropped} cropped now, "
            f"{self.cached} from cache; dropped {self.duplicates} duplicate lines, "
            f"{self.low_confidence} low-confidence, {self.missing_images} with a missing "
            f"photo, {self.empty_boxes} empty boxes"
        )


def _first_existing(root, names, exists, what, hint) -> str:
    root = os.fspath(root)
    tried = [os.path.join(root, name) for name in names]
    for path in tried:
        if exists(path):
            return path
    raise FileNotFoundError(
        f"No ExpW {what} under {root!r}; expected one of:\n  " + "\n  ".join(tried) + "\n" + hint
    )


def find_label_file(root) -> str:
    """Returns ``<root>/label/label.lst`` (or ``<root>/label.lst``); clear error if absent."""
    return _first_existing(root, LABEL_FILES, os.path.isfile, "label list",
                           "Pass the ExpW root that contains 'label/' and 'image/origin/'.")


def find_image_dir(root) -> str:
    """Returns the folder of full ExpW photos (``image/origin`` after unpacking origin.7z)."""
    return _first_existing(root, IMAGE_DIRS, os.path.isdir, "photo folder",
                           "Unpack image/origin.7z so that image/origin/<name>.jpg exist.")


def parse_label_file(path) -> Tuple[List[Face], int, int]:
    """Parses ``label.lst`` and removes exact duplicate lines.

    Args:
      path: the label file.

    Returns:
      (faces in file order, number of non-empty lines, number of duplicates removed).

    Raises:
      ValueError: a line without 8 fields, a non-numeric field, or a label outside
        0..6; the message names the file and line number.
    """
    path = os.fspath(path)
    faces, seen = [], set()
    lines = duplicates = 0
    for number, line in enumerate(text.read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        lines += 1
        if len(fields) != 8:
            raise ValueError(
                f"{path}:{number}: expected 8 space-separated fields (image_name face_id "
                f"top left right bottom confidence label), got {len(fields)}: {line.strip()!r}"
            )
        try:
            face = Face(
                fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4]),
                int(fields[5]), float(fields[6]), int(fields[7]),
            )
        except ValueError:
            raise ValueError(
                f"{path}:{number}: fields 2-6 and 8 must be integers and field 7 a number, "
                f"got {line.strip()!r}"
            ) from None
        if not 0 <= face.label < len(classes.EXPW_TO_ABAW):
            raise ValueError(
                f"{path}:{number}: expression label {face.label} outside 0..6 in {line.strip()!r}"
            )
        if face in seen:
            duplicates += 1
            continue
        seen.add(face)
        faces.append(face)
    return faces, lines, duplicates


def crop_box(height: int, width: int, face: Face, margin: float) -> Tuple[int, int, int, int]:
    """The crop (top, bottom, left, right), enlarged by ``margin`` and clipped to the photo.

    margin=0.2 adds 20% of the box height above and below and 20% of its width left and
    right before clipping; margin=0 is the raw ``img[top:bottom, left:right]``.
    """
    box_h, box_w = face.bottom - face.top, face.right - face.left
    dy, dx = int(round(margin * box_h)), int(round(margin * box_w))
    top = min(max(face.top - dy, 0), height)
    bottom = min(max(face.bottom + dy, 0), height)
    left = min(max(face.left - dx, 0), width)
    right = min(max(face.right + dx, 0), width)
    return top, bottom, left, right


def crop_face(image: np.ndarray, face: Face, margin: float = 0.0) -> np.ndarray:
    """Crops one face (possibly empty if the box lies outside the photo)."""
    top, bottom, left, right = crop_box(image.shape[0], image.shape[1], face, margin)
    return image[top:bottom, left:right]


def cache_name(face: Face) -> str:
    """Crop file name; carries the box so conflicting lines never share a file."""
    stem = os.path.splitext(face.image)[0]
    return f"{stem}_{face.face_id}_{face.top}_{face.left}_{face.right}_{face.bottom}.jpg"


def margin_folder(cache_dir, margin: float) -> str:
    """Crops made with different margins live in different folders."""
    return os.path.join(os.fspath(cache_dir), f"margin_{margin:g}")


def _is_complete(path: str) -> bool:
    # Crops are written atomically, so any non-empty file is a finished crop.
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _crop_photo(photo: str, faces: List[Tuple[int, Face, str]], margin: float):
    """Crops every face of one photo that is not cached yet. Returns per-face status."""
    status = {}
    todo = [(i, f, p) for i, f, p in faces if not _is_complete(p)]
    for i, _, _ in faces:
        status[i] = "cached"
    if not todo:
        return status
    image = None
    if os.path.isfile(photo):  # cv2.imread would print a warning per missing photo
        image = cv2.imread(photo, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    for i, face, path in todo:
        if image is None:
            status[i] = "missing"
            continue
        crop = crop_face(image, face, margin)
        if crop.size == 0:
            status[i] = "empty"
            continue
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the crop of {face} from {photo}")
        atomic.write_bytes(path, encoded.tobytes())
        status[i] = "cropped"
    return status


def read_expw_with_report(
    root,
    cache_dir,
    margin: float = 0.0,
    min_confidence: Optional[float] = None,
    num_workers: Optional[int] = None,
    log_every_seconds: float = 10.0,
) -> Tuple[examples.LabelledImages, ExpwReport]:
    """Like :func:`read_expw`, also returning what was dropped and cropped."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (a fraction of the box size), got {margin}")
    label_file = find_label_file(root)
    image_dir = find_image_dir(root)
    faces, lines, duplicates = parse_label_file(label_file)
    report = ExpwReport(label_file=label_file, lines=lines, duplicates=duplicates)
    if min_confidence is not None:
        kept = [f for f in faces if f.confidence >= min_confidence]
        report.low_confidence = len(faces) - len(kept)
        faces = kept

    out_dir = margin_folder(cache_dir, margin)
    os.makedirs(out_dir, exist_ok=True)
    by_photo = collections.OrderedDict()
    crop_paths = []
    for i, face in enumerate(faces):
        path = os.path.join(out_dir, cache_name(face))
        crop_paths.append(path)
        by_photo.setdefault(face.image, []).append((i, face, path))

    status = {}
    start = last_log = time.monotonic()
    workers = num_workers or os.cpu_count() or 1
    logging.info("ExpW: %d faces in %d photos -> crops in %s", len(faces), len(by_photo), out_dir)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [
            pool.submit(_crop_photo, os.path.join(image_dir, photo), todo, margin)
            for photo, todo in by_photo.items()
        ]
        # A progress bar on a terminal; periodic log lines in log files and CI.
        bar = tqdm.tqdm(total=len(futures), unit="photo", desc="ExpW crops", disable=None)
        for done, future in enumerate(futures, start=1):
            status.update(future.result())
            bar.update(1)
            now = time.monotonic()
            if not bar.disable:
                continue
            if now - last_log >= log_every_seconds or done == len(futures):
                rate = done / max(now - start, 1e-9)
                logging.info(
                    "ExpW crops: %d/%d photos (%.0f%%), %.0f photos/s, ETA %.0f s",
                    done, len(futures), 100.0 * done / len(futures), rate,
                    (len(futures) - done) / rate,
                )
                last_log = now
        bar.close()

    paths, labels = [], []
    missing = set()
    for i, face in enumerate(faces):
        s = status[i]
        if s == "missing":
            report.missing_images += 1
            missing.add(face.image)
        elif s == "empty":
            report.empty_boxes += 1
        else:
            report.cropped += s == "cropped"
            report.cached += s == "cached"
            paths.append(crop_paths[i])
            labels.append(classes.EXPW_TO_ABAW[face.label])
    report.missing_image_names = sorted(missing)
    result = examples.LabelledImages(paths=paths, labels=np.asarray(labels, dtype=np.int64))
    report.kept = len(result)
    report.class_counts = {c: int(n) for c, n in zip(result.class_names, result.class_counts())}
    logging.info("ExpW (%s): %s", label_file, report.summary())
    if missing:
        logging.warning(
            "ExpW: %d photos missing or undecodable in %s, e.g. %s",
            len(missing), image_dir, report.missing_image_names[:5],
        )
    return result, report


def read_expw(
    root, cache_dir, margin: float = 0.0, min_confidence: Optional[float] = None
) -> examples.LabelledImages:
    """Reads ExpW faces, cropping each once into ``cache_dir``.

    Resumable: crops already in the cache are not redone (they are written
    atomically, so a file that exists is complete).

    Args:
      root: ExpW root holding ``label/label.lst`` and ``image/origin/``.
      cache_dir: where the crops go (``<cache_dir>/margin_<m>/``); writable.
      margin: enlarge each box by this fraction of its size on every side,
        clipped to the photo (0 = the raw box).
      min_confidence: drop faces whose box confidence is below this.

    Returns:
      LabelledImages of the crops with ABAW-ordered labels, in ``label.lst`` order.

    Raises:
      FileNotFoundError: label list or photo folder missing.
      ValueError: malformed ``label.lst`` line (names file and line).
    """
    return read_expw_with_report(root, cache_dir, margin, min_confidence)[0]
