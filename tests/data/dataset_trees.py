"""Writers of tiny dataset trees in the exact on-disk layouts (docs/datasets.md).

Shared by the reader, source, TFDS and stats tests. The expected counts of each tree
are written out by hand in the tests, never computed by the code under test.
"""

import os
import pathlib

import cv2
import numpy as np

HEADER7 = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise"
HEADER8 = HEADER7 + ",Other"


def jpeg_bytes(value: int, size=(8, 8)) -> bytes:
    """A tiny valid colour JPEG whose pixels are all ``value``."""
    image = np.full(size + (3,), value, dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def write_video(annotation_dir, crops_dir, video, labels, missing_crops=(), header=HEADER7,
                crops=True, extra_crops=()):
    """One annotation file and its crop folder.

    Args:
      labels: one int per frame (line k -> crop k+1).
      missing_crops: 1-based frame numbers with no jpg (no face found).
      crops: False = no crop folder at all.
      extra_crops: 1-based frame numbers of crops beyond the annotated frames.
    """
    annotation_dir, crops_dir = pathlib.Path(annotation_dir), pathlib.Path(crops_dir)
    annotation_dir.mkdir(parents=True, exist_ok=True)
    lines = [header] + [str(v) for v in labels]
    (annotation_dir / f"{video}.txt").write_text("\n".join(lines) + "\n")
    if not crops:
        return
    folder = crops_dir / video
    folder.mkdir(parents=True, exist_ok=True)
    for frame in list(range(1, len(labels) + 1)) + list(extra_crops):
        if frame not in missing_crops:
            (folder / f"{frame:05d}.jpg").write_bytes(jpeg_bytes(frame % 256))


def write_affwild2_2020(root):
    """ABAW 2020 layout (Training_Set) with every quirk. Returns root.

    train: v1 (unannotated, a missing crop, an extra crop), v2_left/v2_right,
    v3 (no crop folder). validation: val1.
    """
    root = pathlib.Path(root)
    ann = root / "annotations" / "EXPR_Set"
    crops = root / "cropped_aligned"
    write_video(ann / "Training_Set", crops, "v1", [0, 1, -1, 2, 3, 4, 5, 6, -1, 0],
                missing_crops=(4, 9), extra_crops=(11,))
    write_video(ann / "Training_Set", crops, "v2_left", [4, 4, 4])
    write_video(ann / "Training_Set", crops, "v2_right", [6, -1, 2], missing_crops=(3,))
    write_video(ann / "Training_Set", crops, "v3", [1, 1], crops=False)
    write_video(ann / "Validation_Set", crops, "val1", [5, 5, -1, 0])
    # Not a crop: must be ignored.
    (crops / "v1" / "notes.txt").write_text("x")
    return root


def write_affwild2_2022(root, challenge="EXPR_Classification_Challenge", parent=""):
    """2022+ layout: Train_Set/Validation_Set, 8-class header with Other. Returns root."""
    root = pathlib.Path(root)
    ann = root / parent / challenge
    crops = root / "cropped_aligned"
    write_video(ann / "Train_Set", crops, "a", [7, 0, 7, -1, 3, -5], header=HEADER8)
    write_video(ann / "Validation_Set", crops, "b", [2, 7], header=HEADER8)
    return root


def write_photo(path, height, width, seed):
    """A random colour photo (so crops of different boxes differ)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(os.fspath(path), image)


# (line, expected ABAW label or None if dropped). Fields: image face top left right bottom conf label.
EXPW_LINES = [
    "p1.jpg 0 10 20 50 40 0.95 3",   # happy -> Happiness 4; crop 30x30
    "p1.jpg 1 5 0 30 25 0.40 6",     # neutral -> Neutral 0; low confidence
    "p1.jpg 0 10 20 50 40 0.95 3",   # exact duplicate
    "p2.jpg 0 0 0 10 10 0.9 0",      # angry -> 1
    "p2.jpg 1 0 10 20 10 0.9 1",     # disgust -> 2
    "p2.jpg 2 0 20 30 10 0.9 2",     # fear -> 3
    "p2.jpg 3 10 0 10 20 0.9 4",     # sad -> 5
    "p2.jpg 4 10 10 20 20 0.9 5",    # surprise -> 6
    "p2.jpg 5 10 20 30 20 0.9 6",    # neutral -> 0
    "gone.jpg 0 0 0 10 10 0.9 3",    # photo missing
    "p1.jpg 2 70 70 90 90 0.9 3",    # box outside the 60x80 photo -> empty after clipping
]


def write_expw(root, lines=EXPW_LINES):
    """ExpW layout: image/origin/p1.jpg (60x80), p2.jpg (30x40), label/label.lst."""
    root = pathlib.Path(root)
    write_photo(root / "image" / "origin" / "p1.jpg", 60, 80, seed=1)
    write_photo(root / "image" / "origin" / "p2.jpg", 30, 40, seed=2)
    (root / "label").mkdir(parents=True, exist_ok=True)
    (root / "label" / "label.lst").write_text("\n".join(lines) + "\n")
    return root


def write_image_folder(root, split, counts):
    """``<root>/<split>/<class>/<i>.png|jpg`` with ``counts[class]`` gray images."""
    root = pathlib.Path(root)
    for name, n in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            suffix = ".png" if i % 2 else ".jpg"
            cv2.imwrite(os.fspath(folder / f"{i}{suffix}"), np.full((6, 6), 10 * i, np.uint8))
    return root
