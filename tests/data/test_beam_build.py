"""Builds through Apache Beam (in-process runner) write the same records as the plain build.

Needs apache-beam (in the ``dev`` extra, so CI has it); the no-Beam fallback is tested
in test_tfds_builders.py.
"""

import logging
import os
import pathlib
import subprocess
import sys

import apache_beam  # the point of this file: fail, not skip, without it
import tensorflow as tf

import dataset_trees
from fer_tf.data import affwild2, expw, tfds_builders

# FnApiRunner: the in-process runner that Beam's DirectRunner uses for batch pipelines,
# named directly because the DirectRunner (Beam >= 2.6x) first tries to download its
# Prism runner from GitHub, which a test must not do. One worker: the trees are tiny and
# the machine is shared.
LOCAL = dict(beam_runner="FnApiRunner", beam_options=["--direct_num_workers=1"])


def _shard_files(data_dir):
    files = sorted(pathlib.Path(data_dir).rglob("*.tfrecord-*"))
    assert files, f"no shards under {data_dir}"
    return files


def _shards(data_dir):
    """{file name: bytes} of every record shard under data_dir."""
    return {f.name: f.read_bytes() for f in _shard_files(data_dir)}


def _parsed(data_dir):
    """{file name: [tf.train.Example]} of every record shard under data_dir."""
    return {f.name: [tf.train.Example.FromString(r.numpy())
                     for r in tf.data.TFRecordDataset(os.fspath(f))]
            for f in _shard_files(data_dir)}


def _build_both(dataset, root, tmp_path, caplog, **options):
    plain = tfds_builders.build(dataset, root, tmp_path / "plain", **options)
    with caplog.at_level(logging.INFO, logger="absl"):  # whatever absl's verbosity is
        beam = tfds_builders.build(dataset, root, tmp_path / "beam", **LOCAL, **options)
    # TFDS's own line from its Beam writer: the split really went through the pipeline.
    assert "using BeamWriter" in caplog.text
    assert {n: s.shard_lengths for n, s in beam.info.splits.items()} == \
        {n: s.shard_lengths for n, s in plain.info.splits.items()}
    return plain, beam


def _records(data_dir, dataset, split, **options):
    return list(tfds_builders.load(dataset, data_dir, split, encoded_images=True,
                                   **options).as_numpy_iterator())


def test_affwild2_beam_build_equals_plain_build(tmp_path, caplog):
    root = dataset_trees.write_affwild2_2020(tmp_path / "manual")
    _build_both("affwild2", root, tmp_path, caplog)
    # Bytes identical: built in one process (see the command-line test for across them).
    assert _shards(tmp_path / "beam") == _shards(tmp_path / "plain")
    for split in ("train", "validation"):  # and in the reader's order
        reader = affwild2.read_affwild2(root, split)
        records = _records(tmp_path / "beam", "affwild2", split)
        assert [(r["video"].decode(), int(r["frame"]), int(r["label"])) for r in records] == \
            list(zip(reader.videos, reader.frames.tolist(), reader.labels.tolist()))
        assert [r["image"] for r in records] == [pathlib.Path(p).read_bytes()
                                                 for p in reader.paths]


def test_expw_beam_build_equals_plain_build(tmp_path, caplog):
    root = dataset_trees.write_expw(tmp_path / "manual")
    _build_both("expw", root, tmp_path, caplog, margin=0.2)
    assert _shards(tmp_path / "beam") == _shards(tmp_path / "plain")
    reader = expw.read_expw(root, tmp_path / "cache", margin=0.2)
    records = _records(tmp_path / "beam", "expw", "train", margin=0.2)
    assert [int(r["label"]) for r in records] == reader.labels.tolist()
    assert [r["image"] for r in records] == [pathlib.Path(p).read_bytes() for p in reader.paths]


def test_prepare_command_line_beam_options(tmp_path):
    # The runner given inside --beam_options only (as for Dataflow, Flink, Spark).
    root = dataset_trees.write_affwild2_2020(tmp_path / "manual")
    repo = pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "fer_tf.data.prepare", "--dataset=affwild2",
         f"--manual_dir={root}", f"--data_dir={tmp_path / 'beam'}",
         "--beam_options=--runner=FnApiRunner --direct_num_workers=1"],
        cwd=repo, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train=11" in proc.stdout and "validation=3" in proc.stdout
    assert f"Building through Apache Beam {apache_beam.__version__}" in proc.stderr
    assert "'--runner=FnApiRunner', '--direct_num_workers=1'" in proc.stderr  # shlex-split
    tfds_builders.build("affwild2", root, tmp_path / "plain")
    # Same examples in the same order; not the same bytes: protobuf writes the features
    # map in an order that varies between processes (two plain builds differ too).
    assert _parsed(tmp_path / "beam") == _parsed(tmp_path / "plain")
