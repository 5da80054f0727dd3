"""The tf.data input pipeline: read, decode, shuffle, batch uint8, prefetch.

Elements are ``(images, labels, weights)``: uint8 RGB [B, S, S, 3], int32 [B],
float32 [B] (the class weight of each label, or 1). The CPU side only decodes
and resizes to the storage size (Aff-Wild2 crops are 112x112 already); the
paper's augmentation, the resize to 224 and the BGR-mean normalisation run
batched inside the model (fer_tf.model, fer_tf.augment), where an accelerator
does them for free.

Corrupt files. tf.data has no per-element try/except that keeps the failing
element's identity: ``ignore_errors`` drops an element with, at best, the
decoder's message and no path. So files are checked once, in plain Python,
before the dataset is built (``check_image_files``): missing, empty, unknown
format, and truncated JPEG/PNG (no end marker) -- what breaks decoders in
practice. Bad files are excluded, counted and their paths logged. A file that
passes the check and still fails to decode (a JPEG corrupt in its middle) is
dropped too, and named and counted (``decoder_rejected``): stream positions are
numbered before decoding, a gap after ``ignore_errors`` shows what was dropped,
and its path is read back from a fresh copy of the same deterministic stream.
So an epoch never crashes and nothing is dropped silently. The check reads
2 x 1 KiB per file (about 2 s per 100k files on a local disk).

Resuming. The recommended way is ``skip_batches=N`` (N = batches already
consumed, e.g. the optimiser step x accumulation): with a fixed seed, the
shuffle is a deterministic function of the position, and skipping happens on the (path, label) stream before any decoding, so it is
cheap and the checkpoint holds one integer. Checkpointing the iterator with
``tf.train.Checkpoint(data=iterator)`` works too, but stores the shuffle buffer
(all paths of the dataset) in every checkpoint.
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from fer_tf.data import class_weights as class_weights_lib

AUTOTUNE = tf.data.AUTOTUNE
PREFETCH_BATCHES = 2
# tf.data's autotuner, off for every input pipeline here (see _finish); only
# benchmarks/epoch_ends.py turns it back on, to measure what it costs.
AUTOTUNE_INPUT = False

# Bytes read at each end of a file by the pre-check.
_CHECK_BYTES = 1024
# Largest image decoded, in pixels (width x height): about 300 MB as uint8 RGB. Larger
# files (a 751 KB PNG can declare 16000 x 16000) are refused from their header, before
# any decoding, in the pipeline (skipped, counted, named) and in the serving signature
# (InvalidArgument). Phone photos reach 50 MP, PIL warns from 89 MP.
MAX_IMAGE_PIXELS = 100_000_000
# How far into a JPEG the pre-check looks for its frame header (EXIF can come first).
_JPEG_SCAN_BYTES = 1 << 16
_LOGGED_PATHS = 20


def _jpeg_dimensions(head: bytes):
    """(width, height) from a JPEG's first frame header within ``head``, or None."""
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        length = int.from_bytes(head[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(head[i + 7:i + 9], "big"), int.from_bytes(head[i + 5:i + 7], "big")
        i += 2 + length
    return None


def header_dimensions(head: bytes):
    """(width, height) an image file declares in its first bytes, or None if unknown.

    PNG (IHDR), GIF (logical screen), BMP (info header) and JPEG (first SOF segment,
    if it lies within ``head``).
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head.startswith((b"GIF87a", b"GIF89a")) and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head.startswith(b"BM") and len(head) >= 26:
        width = int.from_bytes(head[18:22], "little", signed=True)
        height = int.from_bytes(head[22:26], "little", signed=True)
        return abs(width), abs(height)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_dimensions(head)
    return None


def _file_problem(path):
    """Why ``path`` would fail to decode, or None if it looks like a whole image."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(_JPEG_SCAN_BYTES)
            f.seek(max(0, size - _CHECK_BYTES))
            tail = f.read(_CHECK_BYTES)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    dims = header_dimensions(head)
    if dims is not None and dims[0] * dims[1] > MAX_IMAGE_PIXELS:
        return (f"{dims[0]}x{dims[1]} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
                "(fer_tf.data.pipeline.MAX_IMAGE_PIXELS)")
    if head.startswith(b"\xff\xd8\xff"):
        # Truncated downloads lose the end-of-image marker; some encoders pad after it.
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head.startswith((b"GIF87a", b"GIF89a", b"BM")):
        return None
    return f"not a JPEG, PNG, GIF or BMP file (starts with {head[:8]!r})"


def check_image_files(paths, log_limit: int = _LOGGED_PATHS):
    """Finds files that would break decoding, and logs them.

    Args:
      paths: image file paths.
      log_limit: how many bad paths to log individually (all are counted).

    Returns:
      (ok, skipped): bool array, True for usable files; and a list of
      (path, reason) for the others.
    """
    ok = np.ones(len(paths), dtype=bool)
    skipped = []
    for i, path in enumerate(paths):
        problem = _file_problem(path)
        if problem is not None:
            ok[i] = False
            skipped.append((path, problem))
            if len(skipped) <= log_limit:
                logging.warning("skipping %s: %s", path, problem)
    if skipped:
        logging.warning("skipped %d of %d image files that cannot be decoded%s", len(skipped),
                        len(paths), f" (first {log_limit} listed above)"
                        if len(skipped) > log_limit else "")
    return ok, skipped


_CHECK_CACHE = {}


def _checked_files(paths):
    """check_image_files, once per distinct path list in this process.

    A training loop builds one dataset per epoch from the same list; the files
    are read once, not every epoch (a rerun re-checks them: a new process).
    """
    key = hash(tuple(paths))
    if key not in _CHECK_CACHE:
        if len(_CHECK_CACHE) >= 4:
            _CHECK_CACHE.pop(next(iter(_CHECK_CACHE)))
        _CHECK_CACHE[key] = check_image_files(paths)[0]
    elif not _CHECK_CACHE[key].all():
        logging.info("excluding the %d undecodable files found earlier",
                     int((~_CHECK_CACHE[key]).sum()))
    return _CHECK_CACHE[key]


def resize_uint8(image, size: int):
    """Bilinear resize of one uint8 image to size x size (no-op if already that size).

    Antialiased when shrinking (large ExpW crops), plain bilinear when enlarging
    (FER2013's 48x48), where antialiasing changes nothing but TF's antialiased
    kernel is several times slower. Rounds back to uint8.
    """
    shape = tf.shape(image)

    def resized(antialias):
        out = tf.image.resize(image, (size, size), method="bilinear", antialias=antialias)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    shrink = tf.logical_or(shape[0] > size, shape[1] > size)
    out = tf.cond(same, lambda: image,
                  lambda: tf.cond(shrink, lambda: resized(True), lambda: resized(False)))
    return tf.ensure_shape(out, (size, size, 3))


def _header_pixels(data):
    """Width x height an encoded image declares (in-graph; 0 if the format is unknown)."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def big(i, n):
        return sum(b[i + k] * 256 ** (n - 1 - k) for k in range(n))

    def little(i, n):
        return sum(b[i + k] * 256 ** k for k in range(n))

    def signed_abs32(value):
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    magic = tf.strings.substr(data, 0, 8)
    png = tf.equal(magic, b"\x89PNG\r\n\x1a\n")
    gif = tf.logical_or(tf.equal(tf.strings.substr(data, 0, 6), b"GIF87a"),
                        tf.equal(tf.strings.substr(data, 0, 6), b"GIF89a"))
    bmp = tf.equal(tf.strings.substr(data, 0, 2), b"BM")
    other = tf.where(png, big(16, 4) * big(20, 4), tf.where(
        gif, little(6, 2) * little(8, 2),
        tf.where(bmp, signed_abs32(little(18, 4)) * signed_abs32(little(22, 4)), 0)))
    return tf.cond(tf.io.is_jpeg(data),
                   lambda: tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)),
                   lambda: other)


def decode_image(data, size: int):
    """Encoded JPEG/PNG/GIF/BMP bytes (gray or colour) -> uint8 RGB [size, size, 3].

    Images declaring more than MAX_IMAGE_PIXELS are refused from their header with
    InvalidArgument, before any memory is spent decoding them.
    """
    check = tf.debugging.assert_less_equal(
        _header_pixels(data), tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message=f"image declares more than {MAX_IMAGE_PIXELS} pixels "
                "(fer_tf.data.pipeline.MAX_IMAGE_PIXELS); refused")
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return resize_uint8(image, size)


def _finish(ds, batch_size, drop_remainder, num_parallel_calls):
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=num_parallel_calls,
                  deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    # The only stateful op is the logging of dropped files (_decode_naming_drops); it holds
    # nothing an iterator checkpoint needs.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    # Training builds one dataset per epoch and drops its iterator at the epoch's end.
    # With autotuning on, that drop waits for the autotuner's thread, which stalled
    # FER2013 training for up to half a minute at many epoch ends. Without it, AUTOTUNE
    # parallelism stays at its starting value (the number of cores, at most 16) and the
    # prefetch holds a fixed two batches.
    options.autotune.enabled = AUTOTUNE_INPUT
    return ds.with_options(options).prefetch(PREFETCH_BATCHES)


def _ordered(ds, count, shuffle, seed, repeat, skip):
    """Full seeded shuffle, repeat, then skip ``skip`` elements: the example order both
    the file-list and the in-memory pipelines share (so their batches are identical)."""
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if skip:
        ds = ds.skip(int(skip))
    return ds


def check_shard(shard, batch_size: int):
    """Raises ValueError unless ``shard=(index, count)`` splits ``batch_size`` evenly."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count and batch_size % count == 0):
        raise ValueError(f"shard={shard} must be (index, count) with 0 <= index < count and "
                         f"count dividing batch_size={batch_size}")


def _shard(ds, batch_size: int, shard, drop_remainder: bool):
    """Keeps positions [index*b, (index+1)*b) of every ``batch_size`` positions of the
    stream (b = batch_size/count): shard ``index``'s share of each global batch.

    Applied to the (path, label) stream, before decoding, so a worker never reads the
    others' files. With ``drop_remainder`` an incomplete last global batch is dropped
    whole: every shard then has the same number of batches.
    """
    if shard is None:
        return ds
    index, count = shard
    share = batch_size // count
    total = int(ds.cardinality())
    if total >= 0 and drop_remainder:
        ds, total = ds.take(total // batch_size * batch_size), total // batch_size * batch_size
    ds = ds.enumerate().filter(lambda i, _: (i % batch_size) // share == index).map(
        lambda _, element: element)
    if total >= 0:  # keep the cardinality known (the drop reporting relies on it)
        kept = total // batch_size * share + min(max(total % batch_size - index * share, 0), share)
        ds = ds.apply(tf.data.experimental.assert_cardinality(kept))
    return ds


# Paths the decoder rejected after they passed the header check, in the order met
# (each once), for the run's summary.
_DECODER_REJECTED = []


def decoder_rejected() -> list:
    """Paths dropped so far in this process because only the decoder could tell they are bad."""
    return list(_DECODER_REJECTED)


def _report_dropped(fresh_stream, first, end, survivor):
    """Logs the paths at stream positions [first, end): those the decoder dropped.

    ``fresh_stream()`` rebuilds the (path, label, weight) stream in the same order; the
    survivor at ``end`` confirms the positions match before anything is named.
    """
    first, end, survivor = int(first), int(end), os.fsdecode(survivor.numpy())
    window = list(fresh_stream().skip(first).take(end - first + 1).as_numpy_iterator())
    paths = [os.fsdecode(element[0]) for element in window]
    if survivor:
        matches = len(paths) == end - first + 1 and paths[-1] == survivor
    else:  # the end-of-stream sentinel
        matches, paths = len(paths) == end - first, paths + [""]
    if not matches:
        logging.warning("dropped %d undecodable file(s) at stream positions %d-%d",
                        end - first, first, end - 1)
        return True
    for path in paths[:-1]:
        note_decoder_rejected(path)
    return True


def note_decoder_rejected(path: str):
    """Logs and records a file dropped because only the decoder could tell it is bad."""
    if path not in _DECODER_REJECTED:
        _DECODER_REJECTED.append(path)
    logging.warning("skipping %s: the image decoder rejected it (%d such file(s) so far)",
                    path, len(_DECODER_REJECTED))


def _decode_naming_drops(fresh_stream, start, image_size, num_parallel_calls):
    """Decodes a (path, label, weight) stream; files the decoder rejects are dropped by name.

    tf.data has no per-element try/except, so positions are numbered before decoding
    and a gap in them after ``ignore_errors`` is a dropped file (a sentinel after the
    last position of a finite stream catches drops at its end). Costs a sequential scan of integers;
    the path lookup runs only when something was dropped.

    Args:
      fresh_stream: builds the stream (without the resume skip), the same order each call.
      start: the first position (elements already skipped on resume).
    """
    end = int(fresh_stream().cardinality())  # finite epochs end with a sentinel there
    if end < 0:
        end = np.iinfo(np.int64).max  # infinite (repeat): never reached
    blank = (tf.constant(""), tf.zeros([image_size, image_size, 3], tf.uint8),
             tf.constant(0, tf.int32), tf.constant(0.0, tf.float32))

    def decode(position, element):
        path, label, weight = element
        image = decode_image(tf.io.read_file(path), image_size)
        return position, (path, image, label, weight)

    ds = fresh_stream().skip(start).enumerate(start).map(
        decode, num_parallel_calls=num_parallel_calls, deterministic=True).ignore_errors()
    ds = ds.concatenate(tf.data.Dataset.from_tensors((tf.constant(end, tf.int64), blank)))

    def with_gap(expected, item):
        position, example = item
        return position + 1, (expected, position, example)

    def report(first, position, example):
        path, image, label, weight = example
        reported = tf.cond(position > first, lambda: tf.py_function(
            lambda a, b, p: _report_dropped(fresh_stream, a, b, p), [first, position, path],
            tf.bool), lambda: tf.constant(True))
        with tf.control_dependencies([reported]):
            return position, (tf.identity(image), label, weight)

    ds = ds.scan(tf.constant(start, tf.int64), with_gap).map(report)
    return ds.filter(lambda position, example: position < end).map(lambda _, example: example)


class DecodedImages:
    """A labelled list decoded once into memory (uint8 [N, S, S, 3]), for small datasets.

    Epochs built from it skip reading and decoding; the shuffle permutes the same
    number of elements with the same seed as the file-list pipeline, so the order of
    examples is the same as `make_dataset` on the files would give.
    """

    def __init__(self, images, image_size: int, skip_corrupt: bool = True,
                 num_parallel_calls=AUTOTUNE):
        paths = list(images.paths)
        labels = np.asarray(images.labels, np.int64)
        if skip_corrupt:
            ok = _checked_files(paths)
            paths, labels = [p for p, k in zip(paths, ok) if k], labels[ok]
        if not paths:
            raise ValueError(f"no usable images (of {len(images)} listed)")
        # The label slot carries each file's index, so dropped files drop their labels.
        index = np.arange(len(paths), dtype=np.int32)
        stream = lambda: tf.data.Dataset.from_tensor_slices(  # noqa: E731
            (tf.constant(paths), tf.constant(index), tf.ones(len(paths))))
        ds = (_decode_naming_drops(stream, 0, image_size, num_parallel_calls) if skip_corrupt
              else stream().map(lambda p, y, w: (decode_image(tf.io.read_file(p), image_size),
                                                 y, w), num_parallel_calls=num_parallel_calls,
                                deterministic=True))
        batches = list(ds.batch(1024).as_numpy_iterator())
        if not batches:
            raise ValueError(f"no decodable images (of {len(images)} listed)")
        self.pixels = np.concatenate([b[0] for b in batches])
        kept = np.concatenate([b[1] for b in batches])
        self.labels = labels[kept]
        self.image_size = image_size

    @classmethod
    def from_arrays(cls, pixels: np.ndarray, labels: np.ndarray, image_size: int):
        """Images decoded elsewhere (e.g. from TFDS records): uint8 [N, S, S, 3], labels [N]."""
        decoded = cls.__new__(cls)
        decoded.pixels = np.asarray(pixels, np.uint8)
        decoded.labels = np.asarray(labels, np.int64)
        decoded.image_size = image_size
        return decoded

    def __len__(self):
        return len(self.labels)


def make_dataset(images, batch_size: int, image_size: int = 112, shuffle: bool = True,
                 seed: int = 0, repeat: bool = False, class_weights=None,
                 drop_remainder: bool = False,
                 num_parallel_calls=AUTOTUNE, skip_corrupt: bool = True,
                 skip_batches: int = 0, serve=None, shard=None) -> tf.data.Dataset:
    """Batches of (uint8 RGB images, int32 labels, float32 weights) from labelled files.

    Args:
      images: a LabelledImages (fer_tf.data.examples) from any reader, or a
        `DecodedImages` (decoded already: no reading, no decoding, same order).
      batch_size: images per batch.
      image_size: decoded images are resized to image_size x image_size
        (bilinear, antialiased) unless already that size.
      shuffle: full uniform shuffle of the file list (as PyTorch's RandomSampler),
        different in each epoch/iteration, the same for the same seed.
      seed: shuffle seed.
      repeat: repeat forever (epochs follow each other without a gap).
      class_weights: per-class weights (len = number of classes) or None for 1.
      drop_remainder: drop the last incomplete batch.
      num_parallel_calls: parallelism of the decoding map (AUTOTUNE by default).
      skip_corrupt: pre-check files and drop undecodable ones with a logged count
        (see module docstring); False decodes everything and fails on a bad file.
      skip_batches: batches to skip from the start (resume), before decoding.
      serve: None (decode here), or who decodes instead: ``serve(examples, decode,
        batch_size, skip_corrupt)`` gets the ordered, skipped (path, label, weight)
        stream and returns its decoded (image, label, weight) examples, batched here
        (`fer_tf.data.service_input.ServedInput`: tf.data service workers).
      shard: ``(index, count)``: only shard ``index`` of ``count`` (one worker of a
        multi-worker run): of every batch this function gives without ``shard``, the
        images at positions [index*b, (index+1)*b), b = batch_size/count, selected
        before reading and decoding; the batches hold b images, and the ``count``
        shards' batches k, concatenated in index order, are the unsharded batch k
        (files only the decoder rejects, rare, shift that shard's later batches).

    Returns:
      A deterministic tf.data.Dataset (with ``serve``: as deterministic as ``serve``).

    Raises:
      ValueError: bad batch size or class weights, or no usable image.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    share = batch_size
    if shard is not None:
        check_shard(shard, batch_size)
        share = batch_size // shard[1]
    if isinstance(images, DecodedImages):
        if serve is not None:
            raise ValueError("images decoded into memory need no decoding service: drop "
                             "--cache_images or --data_service")
        if images.image_size != image_size:
            raise ValueError(f"images were decoded at {images.image_size}, not {image_size}")
        weights = class_weights_lib.example_weights(images.labels, class_weights)
        ds = _ordered(tf.data.Dataset.from_tensor_slices(
            (images.pixels, tf.constant(images.labels, tf.int32), tf.constant(weights, tf.float32))),
            len(images), shuffle, seed, repeat, skip_batches * batch_size)
        ds = _shard(ds, batch_size, shard, drop_remainder)
        return _finish(ds, share, drop_remainder, num_parallel_calls)
    paths = list(images.paths)
    labels = np.asarray(images.labels, np.int64)
    if skip_corrupt:
        ok = _checked_files(paths)
        paths = [p for p, k in zip(paths, ok) if k]
        labels = labels[ok]
    if not paths:
        raise ValueError(f"no usable images (of {len(images)} listed)")
    weights = class_weights_lib.example_weights(labels, class_weights)

    def stream(skip=0):
        return _shard(_ordered(tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths), tf.constant(labels, tf.int32), tf.constant(weights, tf.float32))),
            len(paths), shuffle, seed, repeat, skip), batch_size, shard, drop_remainder)

    if serve is not None:
        ds = serve(stream(skip_batches * batch_size),
                   lambda path: decode_image(tf.io.read_file(path), image_size), share,
                   skip_corrupt)
    elif skip_corrupt:
        # Positions count this shard's stream: skip_batches batches of `share` each.
        ds = _decode_naming_drops(stream, skip_batches * share, image_size,
                                  num_parallel_calls)
    else:
        ds = stream(skip_batches * batch_size).map(
            lambda p, y, w: (decode_image(tf.io.read_file(p), image_size), y, w),
            num_parallel_calls=num_parallel_calls, deterministic=True)
    return _finish(ds, share, drop_remainder, num_parallel_calls)


def make_dataset_from_records(records: tf.data.Dataset, batch_size: int, image_size: int = 112,
                              shuffle: bool = True, seed: int = 0, shuffle_buffer: int = 20000,
                              repeat: bool = False, class_weights=None,
                              drop_remainder: bool = False,
                              num_parallel_calls=AUTOTUNE, skip_batches: int = 0,
                              shard=None) -> tf.data.Dataset:
    """The same batches from a TFDS split (fer_tf.data.tfds_builders.load).

    Args:
      records: a tf.data.Dataset of dicts with "image" (encoded bytes -- load with
        ``decoders={"image": tfds.decode.SkipDecoding()}`` for speed -- or uint8
        [H, W, 3]) and "label" (int64); other keys are ignored.
      shard: one worker's share of every global batch, as in `make_dataset`.
      shuffle_buffer: records are shuffled through a buffer of this many examples
        (shuffle the TFDS files too for a better mix); other args as make_dataset.

    Returns:
      A deterministic tf.data.Dataset of (uint8 images, int32 labels, float32 weights).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = records.element_spec
    if not isinstance(spec, dict) or "image" not in spec or "label" not in spec:
        raise ValueError(f"records must be dicts with 'image' and 'label', got {spec}")
    table = None
    if class_weights is not None:
        table = tf.constant(np.asarray(class_weights, np.float32))
    encoded = spec["image"].dtype == tf.string

    def to_example(example):
        label = tf.cast(example["label"], tf.int32)
        image = example["image"]
        image = decode_image(image, image_size) if encoded else resize_uint8(image, image_size)
        weight = tf.ones([], tf.float32) if table is None else tf.gather(table, label)
        return image, label, weight

    ds = records
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if skip_batches:
        ds = ds.skip(int(skip_batches) * batch_size)
    share = batch_size
    if shard is not None:
        check_shard(shard, batch_size)
        share = batch_size // shard[1]
        ds = _shard(ds, batch_size, shard, drop_remainder)
    ds = ds.map(to_example, num_parallel_calls=num_parallel_calls, deterministic=True)
    # Records were validated when built; a bad one is still dropped with a warning.
    ds = ds.ignore_errors(log_warning=True)
    return _finish(ds, share, drop_remainder, num_parallel_calls)
