"""Decoding on tf.data service workers (`tf.data.experimental.service`), batching here.

`served_input(address)` gives the ``serve`` argument of `fer_tf.data.pipeline.make_dataset`:
the epoch's example order (seeded shuffle, resume skip) is computed in this process as
before, then the ordered (path, label, weight) list becomes the source of a served
dataset that reads, decodes and batches on the workers; batches come back, are split
into examples and re-batched here, so batch boundaries and ``drop_remainder`` are the
local pipeline's.

Order. ``processing_mode="distributed_epoch"``: the dispatcher hands out the source
list in order, element by element, and each example is produced exactly once (measured:
"parallel_epochs" gives every worker a full copy, so two workers deliver each image
twice). With one worker the examples arrive in the list's order: the batches are those
of the local pipeline, and a resume -- whose skip is applied to the list before it is
served -- continues exactly. With several workers the examples are all there, but their
order depends on which worker finishes first: each example carries its position, and
the first one that arrives out of order logs one warning that this epoch's order, and
so a resume within it, are approximate. Static sharding (ShardingPolicy.FILE/DATA/HINT)
would fix each worker's share, but TF then requires every trainer to read only from its
local worker, which is not a trainer reading from several machines.

Files the decoder rejects are dropped on the worker (``ignore_errors``, which logs the
decoder's message there); the positions that never arrived are named here at the end of
the epoch, as the local pipeline names them.
"""

import socket
import time

import numpy as np
import tensorflow as tf
from absl import logging

from fer_tf.data import pipeline

PROCESSING_MODE = "distributed_epoch"
# How long to wait for the dispatcher's port: TF itself retries registering a dataset
# (and a worker) for an hour without a word.
CONNECT_TIMEOUT_SECONDS = 10.0
_OUT_OF_ORDER = ("the tf.data service at %s delivered examples out of order (more than one "
                 "worker: they take the epoch's examples in turn and answer as they finish), "
                 "so this epoch's order, and a resume within it, are approximate: every "
                 "example still comes once, but a resume may repeat or skip the few in flight")


def parse_address(address: str):
    """``grpc://HOST:PORT`` (or ``HOST:PORT``) -> (host, port); ValueError if malformed."""
    protocol, _, bare = address.rpartition("://")
    if protocol not in ("", "grpc"):
        raise ValueError(f"tf.data service address {address!r}: only grpc:// is supported")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"tf.data service address {address!r} is not HOST:PORT "
                         "(e.g. grpc://localhost:5050)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS):
    """Raises ValueError within ``timeout`` seconds unless something listens at ``address``."""
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(timeout / 4, 0.1)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"no tf.data service dispatcher reachable at {address} within {timeout:.0f}s "
                    f"({e.strerror or e}); start one with `python -m fer_tf.data.service "
                    f"--dispatcher --port={port}` or fix the address") from None
            time.sleep(0.2)


def _materialize(examples: tf.data.Dataset):
    """The (path, label, weight) stream as numpy arrays (strings only: cheap), or None if
    it is empty."""
    parts = list(examples.batch(1 << 16).as_numpy_iterator())
    if not parts:
        return None
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _served(address, positions, paths, labels, weights, decode, batch_size, skip_corrupt):
    """What runs on the workers: read + decode + batch the ordered list, in order."""
    def load(position, path, label, weight):
        return position, decode(path), label, weight

    ds = tf.data.Dataset.from_tensor_slices((positions, paths, labels, weights)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_corrupt:
        ds = ds.ignore_errors(log_warning=True)
    # Full batches travel cheaper than single images; the local re-batching below keeps
    # the batch boundaries whatever a worker's last batch holds.
    ds = ds.batch(batch_size)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).apply(
        tf.data.experimental.service.distribute(PROCESSING_MODE, address))


class _OrderCheck:
    """Follows the positions that arrive: warns once on disorder, names decoder drops.

    Positions skipped by a jump forward are pending: with several workers they may still
    come. At the end-of-epoch sentinel, those that never came are what the decoder
    dropped (every example is served once) and are named. Checked per served batch
    (one comparison in the usual case): a per-example check cost the trainer more CPU
    than the transfer itself.
    """

    def __init__(self, address, paths):
        self.address, self.paths = address, paths
        self.in_order = True
        self.pending = set()

    def report(self, expected, positions):
        """Called for a batch whose positions are not ``expected, expected + 1, ...``."""
        expected, end = int(expected), len(self.paths)
        for position in positions.numpy().tolist():
            if position < expected:
                self.pending.discard(position)
                if self.in_order:
                    self.in_order = False
                    logging.warning(_OUT_OF_ORDER, self.address)
                continue
            self.pending.update(range(expected, min(position, end)))
            expected = position + 1
            if position >= end:  # the sentinel: whatever is missing was dropped
                for k in sorted(self.pending):
                    path = self.paths[k]
                    pipeline.note_decoder_rejected(
                        path.decode() if isinstance(path, bytes) else str(path))
                self.pending.clear()
        return True

    def apply(self, batches):
        """Batches of (position, image, label, weight) -> examples (image, label, weight)."""
        end = len(self.paths)
        blank = tuple(tf.zeros([1] + t.shape[1:].as_list(), t.dtype)
                      for t in batches.element_spec[1:])
        batches = batches.concatenate(tf.data.Dataset.from_tensors(
            (tf.constant([end], tf.int64),) + blank))

        def step(expected, batch):
            positions = batch[0]
            usual = tf.logical_and(
                tf.reduce_all(tf.equal(positions, expected + tf.range(
                    tf.size(positions, out_type=tf.int64)))), positions[-1] < end)
            reported = tf.cond(usual, lambda: tf.constant(True), lambda: tf.py_function(
                self.report, [expected, positions], tf.bool))
            with tf.control_dependencies([reported]):
                return tf.maximum(expected, tf.reduce_max(positions) + 1), tuple(
                    tf.identity(t) for t in batch)

        batches = batches.scan(tf.constant(0, tf.int64), step)
        return batches.filter(lambda positions, *_: positions[0] < end).unbatch().map(
            lambda position, *example: example)


class ServedInput:
    """The ``serve`` argument of `pipeline.make_dataset` for one tf.data service."""

    def __init__(self, address: str):
        check_reachable(address)
        self.address = address if "://" in address else f"grpc://{address}"
        logging.info("training input decoded by the tf.data service at %s (%s): exact order "
                     "and resume while one worker serves; a warning says when not",
                     self.address, PROCESSING_MODE)

    def __call__(self, examples: tf.data.Dataset, decode, batch_size: int,
                 skip_corrupt: bool = True) -> tf.data.Dataset:
        """Unbatched (image, label, weight) examples of ``examples``, decoded by the service.

        Args:
          examples: the epoch's (path, label, weight) stream, ordered and skipped already.
          decode: path -> uint8 image tensor (runs on the workers).
          batch_size: examples per batch sent back by a worker.
          skip_corrupt: drop (and name) files the decoder rejects instead of failing.
        """
        listed = _materialize(examples)
        if listed is None:  # resumed after an epoch's last batch: nothing to serve
            return examples.map(lambda path, label, weight: (decode(path), label, weight))
        paths, labels, weights = listed
        positions = np.arange(len(paths), dtype=np.int64)
        served = _served(self.address, positions, paths, labels, weights, decode, batch_size,
                         skip_corrupt)
        return _OrderCheck(self.address, list(paths)).apply(served)


def served_input(address: str):
    """A `ServedInput` for ``address``, or None when it is empty (decode locally)."""
    return ServedInput(address) if address else None
