"""Aff-Wild2 expression track (ABAW 2020-2024) reader: annotation files + aligned crops.

Layout (docs/datasets.md)::

    annotations/EXPR_Set/Training_Set/<video>.txt     # "Train_Set" from 2021 on
    annotations/EXPR_Set/Validation_Set/<video>.txt
    cropped_aligned/<video>/00001.jpg ...

2022-2024 editions move the annotations to ``EXPR_Classification_Challenge/`` or
``EXPR_Recognition_Challenge/`` (``Train_Set`` / ``Validation_Set``) and add an 8th
class ``Other``. Each annotation file is a header with the class list, then one
integer per video frame; label line k (0-based after the header) belongs to
``cropped_aligned/<video>/{k+1:05d}.jpg``. Negative labels mean "not annotated".
"""

import dataclasses
import os
from typing import Dict, List, Tuple

import numpy as np
from absl import logging

from fer_tf import classes
from fer_tf.data import examples, text

# Split name -> folder names used by the ABAW editions (2020: Training_Set, 2021+: Train_Set).
SPLIT_FOLDERS = {
    "train": ("Train_Set", "Training_Set"),
    "validation": ("Validation_Set",),
}

# Where the split folders live relative to the root the user gives, per edition. The
# root may be the dataset root, the annotations folder, or the challenge folder itself.
ANNOTATION_PARENTS = (
    os.path.join("annotations", "EXPR_Set"),
    "EXPR_Set",
    os.path.join("annotations", "EXPR_Classification_Challenge"),
    "EXPR_Classification_Challenge",
    os.path.join("annotations", "EXPR_Recognition_Challenge"),
    "EXPR_Recognition_Challenge",
    "",
)

CROPS_FOLDER = "cropped_aligned"

@dataclasses.dataclass
class ReadReport:
    """What one read kept and dropped, frame by frame.

    Attributes:
      annotation_dir: the split folder that was read.
      crops_dirs: the folders holding one crop folder per video, searched in order.
      videos: number of annotation files read.
      labelled_frames: label lines after the headers (all frames of all videos).
      kept: frames returned (label kept and a crop exists).
      unannotated: frames with a negative label (skipped).
      no_crop: annotated frames without a jpg (no face found); dropped.
      other_dropped: frames labelled ``Other`` dropped because keep_other is False.
      videos_without_crops: videos whose crop folder does not exist at all.
      class_counts: kept frames per class name.
    """

    annotation_dir: str = ""
    crops_dirs: List[str] = dataclasses.field(default_factory=list)
    videos: int = 0
    labelled_frames: int = 0
    kept: int = 0
    unannotated: int = 0
    no_crop: int = 0
    other_dropped: int = 0
    videos_without_crops: List[str] = dataclasses.field(default_factory=list)
    class_counts: Dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One human-readable line."""
        per_class = ", ".join(f"{n} {c}" for c, n in self.class_counts.items())
        return (
            f"{self.kept} frames kept from {self.videos} videos ({per_class}); dropped "
            f"{self.unannotated} unannotated, {self.no_crop} without a crop, "
            f"{self.other_dropped} Other; {len(self.videos_without_crops)} videos "
            f"have no crop folder"
        )


def find_annotation_dir(root, split: str) -> str:
    """Finds the folder of ``<video>.txt`` files for a split under any ABAW layout.

    Args:
      root: the dataset root, its ``annotations`` folder or the challenge folder.
      split: "train" or "validation".

    Returns:
      The split folder path.

    Raises:
      ValueError: unknown split.
      FileNotFoundError: no split folder found; the message lists every path tried.
    """
    if split not in SPLIT_FOLDERS:
        raise ValueError(
            f"Aff-Wild2 split {split!r} unknown: expected one of {sorted(SPLIT_FOLDERS)} "
            "(the expression test set has no public labels)"
        )
    root = os.fspath(root)
    tried = []
    parents = list(ANNOTATION_PARENTS)
    # Annotation archives often unpack into an extra folder ("6th ABAW Annotations/...").
    if os.path.isdir(root):
        for entry in sorted(os.listdir(root)):
            for challenge in ("EXPR_Set", "EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"):
                if os.path.isdir(os.path.join(root, entry, challenge)):
                    parents.append(os.path.join(entry, challenge))
    for parent in parents:
        for folder in SPLIT_FOLDERS[split]:
            candidate = os.path.join(root, parent, folder)
            tried.append(candidate)
            if os.path.isdir(candidate):
                return candidate
    raise FileNotFoundError(
        f"No Aff-Wild2 expression annotations for split {split!r} under {root!r}. "
        "Expected a folder of <video>.txt files at one of:\n  " + "\n  ".join(tried)
        + "\nPass the folder that contains 'annotations/' and 'cropped_aligned/'."
    )


def _with_siblings(crops: str) -> List[str]:
    # Later editions ship extra crops for new videos in sibling folders
    # (e.g. cropped_aligned_new_50_vids/): use them too, main folder first.
    parent = os.path.dirname(crops)
    extra = sorted(
        os.path.join(parent, n) for n in os.listdir(parent)
        if n.startswith(CROPS_FOLDER) and n != CROPS_FOLDER and os.path.isdir(os.path.join(parent, n))
    )
    return [crops] + extra


def find_crops_dirs(root, annotation_dir: str) -> List[str]:
    """Finds ``cropped_aligned`` (and ``cropped_aligned*`` siblings) near the annotations.

    Looks in the annotation folder and its parents up to the root, then beside the root.

    Raises:
      FileNotFoundError: nothing found; the message lists every path tried.
    """
    root = os.path.abspath(os.fspath(root))
    tried = []
    here = os.path.abspath(annotation_dir)
    while True:
        tried.append(os.path.join(here, CROPS_FOLDER))
        if here == root or os.path.dirname(here) == here:
            break
        here = os.path.dirname(here)
    # The root may be the annotations folder itself, with the crops beside it.
    beside = os.path.join(os.path.dirname(root), CROPS_FOLDER)
    if beside not in tried:
        tried.append(beside)
    for candidate in tried:
        if os.path.isdir(candidate):
            return _with_siblings(candidate)
    raise FileNotFoundError(
        f"No Aff-Wild2 crop folder found for annotations {annotation_dir!r}. Expected "
        f"'{CROPS_FOLDER}/<video>/00001.jpg ...' at one of:\n  " + "\n  ".join(tried)
        + "\nUnpack cropped_aligned.zip into the dataset root or pass crops_dir=."
    )


def _class_index_map(header: str, path: str, keep_other: bool) -> np.ndarray:
    """Maps header position -> output class index (-2 = Other, dropped)."""
    names = [n.strip() for n in header.split(",")]
    lookup = {c.lower(): i for i, c in enumerate(classes.CLASS_NAMES)}
    mapping = []
    for name in names:
        key = name.lower()
        if key == classes.OTHER_CLASS_NAME.lower():
            mapping.append(classes.NUM_CLASSES if keep_other else -2)
        elif key in lookup:
            mapping.append(lookup[key])
        else:
            raise ValueError(
                f"{path}:1: header {header!r} has unknown class {name!r}; expected a "
                f"comma-separated subset of {list(classes.CLASS_NAMES) + [classes.OTHER_CLASS_NAME]}"
            )
    return np.asarray(mapping, dtype=np.int64)


def parse_annotation_file(path, keep_other: bool = False) -> Tuple[np.ndarray, int]:
    """Reads one ``<video>.txt``: per-frame labels in ABAW order.

    Args:
      path: annotation file.
      keep_other: map ``Other`` to index 7 instead of dropping it.

    Returns:
      (labels, other_count): int64 array with one entry per label line; -1 marks
      unannotated frames (any negative value) and -2 marks dropped ``Other`` frames.

    Raises:
      ValueError: empty file, unknown header class, non-integer line or a label
        outside the header's range; the message names the file and line number.
    """
    path = os.fspath(path)
    lines = text.read_lines(path, "utf-8-sig")
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}:1: empty file; expected a header such as "
                         f"{','.join(classes.CLASS_NAMES)}")
    mapping = _class_index_map(lines[0], path, keep_other)
    body = lines[1:]
    # Trailing blank lines are harmless; a blank line in the middle would shift frames.
    while body and not body[-1].strip():
        body.pop()
    try:
        raw = np.array(body, dtype=object).astype(np.int64) if body else np.zeros(0, np.int64)
    except (ValueError, TypeError):
        for number, line in enumerate(body, start=2):
            try:
                int(line)
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: expected one integer label per line "
                    f"(-1 or 0..{len(mapping) - 1}), got {line!r}"
                ) from None
        raise
    too_big = np.nonzero(raw >= len(mapping))[0]
    if too_big.size:
        number = int(too_big[0]) + 2
        raise ValueError(
            f"{path}:{number}: label {int(raw[too_big[0]])} is outside the header's "
            f"{len(mapping)} classes (valid: -1 or 0..{len(mapping) - 1})"
        )
    labels = np.where(raw < 0, -1, mapping[np.maximum(raw, 0)])
    return labels, int(np.count_nonzero(labels == -2))


def _list_crops(folder: str) -> Dict[int, str]:
    """Frame number (1-based) -> file name, listing the folder once (fast on 1M files)."""
    found = {}
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            # str methods rather than a regex: this runs once per crop (~1M times).
            stem, dot, suffix = name.rpartition(".")
            if dot and stem.isascii() and stem.isdigit() and suffix.lower() in ("jpg", "jpeg"):
                found[int(stem)] = name
    return found


def read_affwild2_with_report(
    root, split: str = "train", keep_other: bool = False, crops_dir=None
) -> Tuple[examples.LabelledImages, ReadReport]:
    """Like :func:`read_affwild2`, also returning what was dropped.

    Returns:
      (images, report).
    """
    annotation_dir = find_annotation_dir(root, split)
    if crops_dir:
        given = [crops_dir] if isinstance(crops_dir, (str, os.PathLike)) else list(crops_dir)
        crops_dirs = [os.fspath(d) for d in given]
        for d in crops_dirs:
            if not os.path.isdir(d):
                raise FileNotFoundError(f"crops_dir {d!r} is not a folder of <video>/00001.jpg crops")
    else:
        crops_dirs = find_crops_dirs(root, annotation_dir)
    class_names = tuple(classes.CLASS_NAMES) + ((classes.OTHER_CLASS_NAME,) if keep_other else ())
    report = ReadReport(annotation_dir=annotation_dir, crops_dirs=crops_dirs)
    files = sorted(n for n in os.listdir(annotation_dir) if n.endswith(".txt"))
    if not files:
        raise FileNotFoundError(f"{annotation_dir!r} holds no <video>.txt annotation files")
    paths, labels, videos, frames = [], [], [], []
    for name in files:
        video = name[: -len(".txt")]
        video_labels, other = parse_annotation_file(os.path.join(annotation_dir, name), keep_other)
        report.videos += 1
        report.labelled_frames += len(video_labels)
        report.other_dropped += other
        report.unannotated += int(np.count_nonzero(video_labels == -1))
        wanted = np.nonzero(video_labels >= 0)[0]
        folders = [os.path.join(d, video) for d in crops_dirs]
        folder = next((f for f in folders if os.path.isdir(f)), None)
        crops = _list_crops(folder) if folder else None
        if crops is None:
            report.videos_without_crops.append(video)
            crops = {}
        has_crop = np.fromiter((k + 1 in crops for k in wanted), dtype=bool, count=len(wanted))
        report.no_crop += int(np.count_nonzero(~has_crop))
        kept = wanted[has_crop]
        prefix = (folder or "") + os.sep  # plain concatenation: os.path.join per frame is slow
        paths.extend([prefix + crops[k + 1] for k in kept.tolist()])
        labels.append(video_labels[kept])
        videos.extend([video] * len(kept))
        frames.append(kept)
    result = examples.LabelledImages(
        paths=paths,
        labels=np.concatenate(labels),
        class_names=class_names,
        videos=videos,
        frames=np.concatenate(frames),
    )
    report.kept = len(result)
    report.class_counts = {c: int(n) for c, n in zip(class_names, result.class_counts())}
    logging.info("Aff-Wild2 %s (%s): %s", split, annotation_dir, report.summary())
    if report.videos_without_crops:
        logging.warning(
            "Aff-Wild2 %s: no crop folder in %s for %d videos, e.g. %s",
            split, crops_dirs, len(report.videos_without_crops), report.videos_without_crops[:5],
        )
    return result, report


def read_affwild2(
    root, split: str = "train", keep_other: bool = False, crops_dir=None
) -> examples.LabelledImages:
    """Reads the Aff-Wild2 expression frames that have both a label and a face crop.

    Args:
      root: dataset root holding ``annotations/`` (or a 2022-24 challenge folder) and
        ``cropped_aligned/``; the annotations or challenge folder itself also works.
      split: "train" (``Training_Set`` or ``Train_Set``) or "validation".
      keep_other: keep the 2022+ ``Other`` class as index 7 (class_names gets
        "Other"); by default those frames are dropped.
      crops_dir: the ``cropped_aligned`` folder (or a list of such folders, searched in
        order per video) if it is not next to the annotations. By default
        ``cropped_aligned`` is found beside the annotations, together with sibling
        ``cropped_aligned*`` folders (extra crops of later editions).

    Returns:
      LabelledImages with ABAW-ordered labels, video = annotation file stem (with
      ``_left``/``_right``), frame = 0-based label line index k (crop ``k+1``).

    Raises:
      FileNotFoundError: annotations or crops not found (lists what was expected).
      ValueError: a malformed annotation file (names the file and line).
    """
    return read_affwild2_with_report(root, split, keep_other, crops_dir)[0]
