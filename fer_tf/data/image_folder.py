"""Class-per-folder image datasets (FER2013, RAF-DB or AffectNet exports ...).

Layout: ``<root>/<split>/<class_name>/*.jpg|png``. A class-name mapping turns the
folder names into the project's class indices; FER2013's is built in. Images may be
grayscale and small: the tf.data pipeline decodes every image to 3 channels.
"""

import os
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from fer_tf import classes
from fer_tf.data import examples

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Built-in class maps by name.
CLASS_MAPS = {"fer2013": classes.FER2013_FOLDERS}


def resolve_class_map(class_map) -> Mapping[str, int]:
    """Accepts a dict (folder name -> class index) or a built-in name such as "fer2013"."""
    if class_map is None:
        return classes.FER2013_FOLDERS
    if isinstance(class_map, str):
        if class_map.lower() not in CLASS_MAPS:
            raise ValueError(f"unknown class map {class_map!r}; built in: {sorted(CLASS_MAPS)}, "
                             "or pass a dict folder name -> class index")
        return CLASS_MAPS[class_map.lower()]
    return dict(class_map)


def read_image_folder(
    root,
    split: str,
    class_map=None,
    class_names: Sequence[str] = classes.CLASS_NAMES,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> examples.LabelledImages:
    """Lists ``<root>/<split>/<class>/*`` images with their class indices.

    Args:
      root: dataset root.
      split: sub-folder name of the split (e.g. "train", "test").
      class_map: folder name -> index into ``class_names`` (matched
        case-insensitively), or "fer2013"; None means FER2013's folders.
      class_names: the label space (the 7 ABAW classes by default).
      extensions: image file suffixes to take (case-insensitive).

    Returns:
      LabelledImages sorted by class folder then file name.

    Raises:
      FileNotFoundError: the split folder is missing (lists the folders that exist).
      ValueError: class folders not in the map (lists them and the known names), or a
        map index outside ``class_names``.
    """
    mapping = {k.lower(): int(v) for k, v in resolve_class_map(class_map).items()}
    bad = {k: v for k, v in mapping.items() if not 0 <= v < len(class_names)}
    if bad:
        raise ValueError(f"class map indices {bad} outside 0..{len(class_names) - 1} ({class_names})")
    split_dir = os.path.join(os.fspath(root), split)
    if not os.path.isdir(split_dir):
        present = sorted(os.listdir(root)) if os.path.isdir(root) else []
        raise FileNotFoundError(
            f"image folder split {split_dir!r} not found; expected <root>/<split>/<class>/*.jpg. "
            f"{root!r} holds: {present if present else 'nothing (or does not exist)'}"
        )
    folders = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    unknown = [f for f in folders if f.lower() not in mapping]
    if unknown:
        raise ValueError(
            f"{split_dir}: class folders {unknown} are not in the class map; known names: "
            f"{sorted(mapping)}. Rename the folders to these names (or, from Python, pass "
            "read_image_folder(..., class_map={folder: index}))."
        )
    suffixes = tuple(s.lower() for s in extensions)
    paths, labels = [], []
    for folder in folders:
        folder_path = os.path.join(split_dir, folder)
        names = sorted(e.name for e in os.scandir(folder_path)
                       if e.is_file() and e.name.lower().endswith(suffixes))
        paths.extend(os.path.join(folder_path, n) for n in names)
        labels.extend([mapping[folder.lower()]] * len(names))
    missing = sorted(set(mapping) - {f.lower() for f in folders})
    if missing:
        logging.warning("%s: no folder for classes %s (0 images)", split_dir, missing)
    result = examples.LabelledImages(paths, np.asarray(labels, dtype=np.int64), class_names)
    logging.info("Image folder %s: %s", split_dir, result.summary())
    return result
