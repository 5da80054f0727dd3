"""One entry point to every dataset reader, by name, with merges such as "affwild2+expw".

Names and splits:

=============  ==========================================  ===============================
name           data_dir                                    splits
=============  ==========================================  ===============================
affwild2       Aff-Wild2 root (annotations/, cropped_       train, validation
               aligned/; any ABAW edition)
demo           output of ``python -m fer_tf.data.demo``     train, validation
               (Aff-Wild2 layout, read by the same reader)
expw           ExpW root (label/label.lst, image/origin/)   train (ExpW has no splits; the
                                                            paper trains on all of it)
fer2013        FER2013 folders (train/, test/)              train (train/ minus a seeded,
                                                            stratified 10%), validation
                                                            (that 10%), test (test/ =
                                                            PublicTest), train_all (train/)
image_folder   ``<root>/<split>/<class>/``                  the split name is the folder
                                                            (validation also tries val/)
=============  ==========================================  ===============================

Merges: ``dataset="affwild2+expw"`` with ``data_dir`` either a comma-separated list in
the same order ("/data/affwild2,/data/expw") or a dict {"affwild2": ..., "expw": ...}.
Options are shared by all parts; each reader takes the ones it knows, and an option
no part knows is an error (a typo must not be silently ignored).
"""

import os
from typing import Dict, Union

from fer_tf.data import affwild2, examples, expw, holdout, image_folder

# Reader options per dataset name.
_OPTIONS = {
    "affwild2": {"keep_other", "crops_dir"},
    "demo": {"keep_other", "crops_dir"},
    "expw": {"cache_dir", "margin", "min_confidence"},
    "fer2013": set(),
    "image_folder": {"class_map", "extensions"},
}
DATASETS = tuple(sorted(_OPTIONS))

# Folder names tried for a split in image-folder datasets, in order.
_FOLDER_SPLITS = {
    "train": ("train", "training"),
    "validation": ("validation", "val", "valid"),
    "test": ("test",),
}
# FER2013 split -> (folder, part of it). PublicTest is the reported split, so validation
# (model selection) is carved out of train/ (fer_tf.data.holdout).
_FER2013_SPLITS = {"train": ("train", "train"), "validation": ("train", "validation"),
                   "test": ("test", None), "train_all": ("train", None)}

# ExpW crops go here (inside data_dir) unless cache_dir is given.
EXPW_DEFAULT_CACHE = "fer_tf_crops"


def _read_one(name: str, data_dir, split: str, options: dict) -> examples.LabelledImages:
    data_dir = os.fspath(data_dir)
    if name in ("affwild2", "demo"):
        return affwild2.read_affwild2(data_dir, split, **options)
    if name == "expw":
        if split != "train":
            raise ValueError(
                f"ExpW has no {split!r} split: it is one set of faces, used whole for "
                "training (the paper's Aff-Wild2 train + ExpW). Use split='train'."
            )
        options = dict(options)
        cache_dir = options.pop("cache_dir", None) or os.path.join(data_dir, EXPW_DEFAULT_CACHE)
        return expw.read_expw(data_dir, cache_dir, **options)
    if name == "fer2013":
        if split not in _FER2013_SPLITS:
            raise ValueError(f"FER2013 split {split!r} unknown; expected {sorted(_FER2013_SPLITS)}")
        folder, part = _FER2013_SPLITS[split]
        images = image_folder.read_image_folder(data_dir, folder, "fer2013")
        return images if part is None else holdout.carve(images, part)
    if name == "image_folder":
        for folder in _FOLDER_SPLITS.get(split, (split,)):
            if os.path.isdir(os.path.join(data_dir, folder)):
                return image_folder.read_image_folder(data_dir, folder, **options)
        # Nothing matched: let the reader raise its error listing what exists.
        return image_folder.read_image_folder(data_dir, split, **options)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS} or a '+'-joined merge")


def _split_dirs(names, data_dir) -> Dict[str, str]:
    if isinstance(data_dir, dict):
        missing = [n for n in names if n not in data_dir]
        if missing:
            raise ValueError(f"data_dir dict has no entry for {missing}; got keys {sorted(data_dir)}")
        return {n: data_dir[n] for n in names}
    dirs = [os.fspath(data_dir)] if len(names) == 1 else os.fspath(data_dir).split(",")
    if len(dirs) != len(names):
        raise ValueError(
            f"dataset {'+'.join(names)!r} needs {len(names)} comma-separated data dirs in the "
            f"same order, got {len(dirs)}: {data_dir!r}"
        )
    return {n: d.strip() for n, d in zip(names, dirs)}


def load_source(
    dataset: str, data_dir: Union[str, os.PathLike, Dict[str, str]], split: str, **options
) -> examples.LabelledImages:
    """Reads a dataset (or a "+"-joined merge of datasets) split as LabelledImages.

    Args:
      dataset: "affwild2", "demo", "expw", "fer2013", "image_folder", or e.g.
        "affwild2+expw".
      data_dir: the dataset root; for merges a comma-separated list in the order of
        ``dataset`` or a dict name -> root.
      split: "train", "validation" or "test" (see the module docstring per dataset).
      **options: reader options: keep_other, crops_dir (affwild2/demo); cache_dir
        (default ``<data_dir>/fer_tf_crops``), margin, min_confidence (expw);
        class_map, extensions (image_folder).

    Returns:
      The examples, merged in the order of ``dataset``.

    Raises:
      ValueError: unknown dataset, split or option; mismatched data dirs.
    """
    names = [n.strip().lower() for n in dataset.split("+")]
    for n in names:
        if n not in _OPTIONS:
            raise ValueError(f"unknown dataset {n!r} in {dataset!r}; expected one of {DATASETS}")
    known = set().union(*(_OPTIONS[n] for n in names))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"options {unknown} are not understood by {dataset!r} (known: {sorted(known)})")
    dirs = _split_dirs(names, data_dir)
    parts = [
        _read_one(n, dirs[n], split, {k: v for k, v in options.items() if k in _OPTIONS[n]})
        for n in names
    ]
    return parts[0] if len(parts) == 1 else examples.merge(*parts)
