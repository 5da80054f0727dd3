"""Training and evaluation input from the TFRecord shards `fer_tf.data.prepare` builds.

``--dataset=tfds:affwild2`` (or ``tfds:expw``, ``tfds:affwild2+expw``) with ``--data_dir``
the TFDS data dir reads the built records instead of the image files. The records hold
the readers' examples in the readers' order (the builders disable TFDS's shuffling), so
the pipeline gives the same batches as the file-list path: the same full, seeded shuffle
(tf.data's permutation depends only on the count, the seed and the buffer, not on the
elements), the same class weights (counted from the records' labels), the same resume
skip before decoding. The one difference is memory: a full shuffle holds every encoded
image of the split (about 5 KB each for Aff-Wild2 crops); ``shuffle_buffer`` caps it at
the price of a different (approximate) order, which the log says.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from fer_tf import classes
from fer_tf.data import pipeline, tfds_builders

PREFIX = "tfds:"


def is_records(dataset: str) -> bool:
    """True for dataset names that read built TFDS records ("tfds:affwild2", ...)."""
    return bool(dataset) and dataset.strip().lower().startswith(PREFIX)


@dataclasses.dataclass
class RecordSplit:
    """A built split: its records (encoded images, reader order) and their labels.

    Has the metadata attributes of `fer_tf.data.examples.LabelledImages` that training
    and evaluation read (labels, videos, frames, class_names), not file paths.
    """

    name: str
    records: tf.data.Dataset
    labels: np.ndarray
    videos: list
    frames: np.ndarray
    class_names: Sequence[str] = classes.CLASS_NAMES

    def __len__(self):
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        """Number of examples per class, in ``class_names`` order."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    def summary(self) -> str:
        """One line: total and per-class counts."""
        per_class = ", ".join(f"{n} {c}" for n, c in zip(self.class_names, self.class_counts()))
        return f"{len(self)} records ({per_class})"


def _metadata(records: tf.data.Dataset):
    """Labels, videos and frames of every record, in order (one pass, images not decoded)."""
    labels, videos, frames = [], [], []
    meta = records.map(lambda e: (e["label"], e["video"], e["frame"]),
                       num_parallel_calls=pipeline.AUTOTUNE, deterministic=True)
    for label, video, frame in meta.batch(65536).as_numpy_iterator():
        labels.append(label)
        videos += [v.decode("utf-8") for v in video]
        frames.append(frame)
    if not labels:
        return np.zeros(0, np.int64), [], np.zeros(0, np.int64)
    return np.concatenate(labels).astype(np.int64), videos, np.concatenate(frames)


def load_split(dataset: str, data_dir, split: str, keep_other: bool = False) -> RecordSplit:
    """Reads a built split of ``dataset`` ("tfds:affwild2", "tfds:affwild2+expw", ...).

    Raises:
      FileNotFoundError: not built in ``data_dir`` (the message gives the prepare command).
      ValueError: a name that is not a "tfds:" dataset.
    """
    if not is_records(dataset):
        raise ValueError(f"{dataset!r} is not a records dataset (expected {PREFIX}<name>)")
    name = dataset.strip()[len(PREFIX):].lower()
    records = tfds_builders.load(name, data_dir, split, keep_other=keep_other,
                                 encoded_images=True)
    labels, videos, frames = _metadata(records)
    names = classes.CLASS_NAMES + ((classes.OTHER_CLASS_NAME,) if keep_other else ())
    return RecordSplit(f"{dataset}/{split}", records, labels, videos, frames, names)


def subset(split: RecordSplit, indices) -> RecordSplit:
    """The records at sorted ``indices`` (a fixed validation subset), in record order."""
    indices = np.unique(np.asarray(indices, np.int64))
    keep = np.zeros(len(split), bool)
    keep[indices] = True
    mask = tf.constant(keep)
    records = split.records.enumerate().filter(
        lambda i, e: tf.gather(mask, i)).map(lambda i, e: e)
    return RecordSplit(split.name, records, split.labels[indices],
                       [split.videos[i] for i in indices], split.frames[indices],
                       split.class_names)


def make_dataset(split: RecordSplit, batch_size: int, image_size: int, shuffle: bool = True,
                 seed: int = 0, class_weights=None, drop_remainder: bool = False,
                 skip_batches: int = 0, shuffle_buffer: Optional[int] = None,
                 shard=None) -> tf.data.Dataset:
    """Batches of (uint8 images, int32 labels, float32 weights), as
    `fer_tf.data.pipeline.make_dataset` gives for the same examples as files.

    Args:
      split: from `load_split`.
      shuffle_buffer: None or 0: a full shuffle (the file-list order exactly); a smaller
        buffer holds fewer encoded images and gives a different order.
      Other args: as `fer_tf.data.pipeline.make_dataset` (one epoch, no repeat).
    """
    count = len(split)
    buffer = count if not shuffle_buffer else min(int(shuffle_buffer), count)
    if shuffle and buffer < count:
        logging.info("%s: shuffle buffer %d of %d records: the order differs from the "
                     "file-list pipeline's (a full shuffle holds every encoded image)",
                     split.name, buffer, count)
    return pipeline.make_dataset_from_records(
        split.records, batch_size, image_size=image_size, shuffle=shuffle, seed=seed,
        shuffle_buffer=max(buffer, 1), class_weights=class_weights,
        drop_remainder=drop_remainder, skip_batches=skip_batches, shard=shard)


def decode_all(split: RecordSplit, image_size: int) -> pipeline.DecodedImages:
    """The split decoded into memory (``--cache_images``), in record order."""
    batches = list(make_dataset(split, 1024, image_size, shuffle=False).as_numpy_iterator())
    return pipeline.DecodedImages.from_arrays(
        np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]),
        image_size)
