"""TFDS builders: offline build from generated trees, load, same examples as the readers."""

import logging
import sys

import numpy as np
import pytest

import dataset_trees
from fer_tf.data import affwild2, expw, tfds_builders


def _records(dataset):
    """As Python values; text decoded, encoded images left as bytes."""
    return [{k: (v.decode() if isinstance(v, bytes) and k != "image" else v)
             for k, v in ex.items()} for ex in dataset.as_numpy_iterator()]


def _file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_affwild2_build_and_load_match_reader(tmp_path):
    root = dataset_trees.write_affwild2_2020(tmp_path / "manual")
    out = tmp_path / "tfds"
    builder = tfds_builders.build("affwild2", root, out)
    assert builder.info.splits["train"].num_examples == 11
    assert builder.info.splits["validation"].num_examples == 3
    for split in ("train", "validation"):
        reader = affwild2.read_affwild2(root, split)
        records = sorted(_records(tfds_builders.load("affwild2", out, split)),
                         key=lambda r: (r["video"], r["frame"]))
        assert [(r["video"], r["frame"], r["label"]) for r in records] == list(
            zip(reader.videos, reader.frames.tolist(), reader.labels.tolist()))
        for r in records:
            # Stored bytes are the crop file: all pixels = frame number (k + 1); JPEG of a
            # flat 8x8 block decodes exactly (tolerance 1 grey level).
            assert r["image"].shape == (8, 8, 3) and r["image"].dtype == np.uint8
            assert np.abs(r["image"].astype(int) - (r["frame"] + 1)).max() <= 1


def test_affwild2_records_in_reader_order(tmp_path):
    # disable_shuffling: position i of the records is position i of the reader (no sort).
    root = dataset_trees.write_affwild2_2020(tmp_path / "manual")
    out = tmp_path / "tfds"
    tfds_builders.build("affwild2", root, out)
    for split in ("train", "validation"):
        reader = affwild2.read_affwild2(root, split)
        records = _records(tfds_builders.load("affwild2", out, split, encoded_images=True))
        assert [(r["video"], r["frame"], r["label"]) for r in records] == list(
            zip(reader.videos, reader.frames.tolist(), reader.labels.tolist()))
        assert [r["image"] for r in records] == [_file_bytes(p) for p in reader.paths]


def test_expw_records_in_reader_order(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "manual")
    out = tmp_path / "tfds"
    tfds_builders.build("expw", root, out)
    reader = expw.read_expw(root, tmp_path / "cache")
    records = _records(tfds_builders.load("expw", out, "train", encoded_images=True))
    assert [r["label"] for r in records] == reader.labels.tolist()
    # The reader's cached crops are encoded like the records (same OpenCV call).
    assert [r["image"] for r in records] == [_file_bytes(p) for p in reader.paths]


def test_affwild2_other_config(tmp_path):
    root = dataset_trees.write_affwild2_2022(tmp_path / "manual")
    builder = tfds_builders.build("affwild2", root, tmp_path / "tfds", keep_other=True)
    assert builder.info.features["label"].names[-1] == "Other"
    labels = sorted(r["label"] for r in _records(tfds_builders.load(
        "affwild2", tmp_path / "tfds", "train", keep_other=True)))
    assert labels == [0, 3, 7, 7]


def test_expw_build_and_load_match_reader(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "manual")
    out = tmp_path / "tfds"
    builder = tfds_builders.build("expw", root, out, min_confidence=0.5)
    reader = expw.read_expw(root, tmp_path / "cache", min_confidence=0.5)
    assert builder.info.splits["train"].num_examples == len(reader) == 7
    records = _records(tfds_builders.load("expw", out, "train", min_confidence=0.5))
    assert sorted(r["label"] for r in records) == sorted(reader.labels.tolist())
    shapes = sorted(r["image"].shape[:2] for r in records)
    assert shapes == [(10, 10)] * 6 + [(30, 30)]


def test_load_before_prepare_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="fer_tf.data.prepare"):
        tfds_builders.load("expw", tmp_path, "train")


def test_missing_manual_dir_shows_instructions(tmp_path):
    with pytest.raises(FileNotFoundError, match="label.lst"):
        tfds_builders.build("expw", tmp_path / "nope", tmp_path / "tfds")


def test_prepare_command_line(tmp_path):
    import subprocess
    import sys

    root = dataset_trees.write_affwild2_2020(tmp_path / "manual")
    repo = dataset_trees.pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "fer_tf.data.prepare", "--dataset=affwild2",
         f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}"],
        cwd=repo, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train=11" in proc.stdout and "validation=3" in proc.stdout
    assert (tmp_path / "tfds" / "affwild2_expression" / "expr7" / "1.1.0").is_dir()


def test_load_merge_concatenates(tmp_path):
    out = tmp_path / "tfds"
    tfds_builders.build("affwild2", dataset_trees.write_affwild2_2020(tmp_path / "aff"), out)
    tfds_builders.build("expw", dataset_trees.write_expw(tmp_path / "expw"), out)
    records = _records(tfds_builders.load("affwild2+expw", out, "train"))
    assert len(records) == 11 + 8
    assert sorted(r["label"] for r in records[11:]) == sorted([4, 0, 1, 2, 3, 5, 6, 0])
    assert all(r["video"] == "" and r["frame"] == -1 for r in records[11:])


def test_prepare_accepts_tfds_manual_dir_inside_data_dir(tmp_path):
    # TFDS's own convention: manual_dir = <data_dir>/downloads/manual. Only the reverse
    # (records written among the source images) is refused.
    from fer_tf.data import prepare  # pylint: disable=import-outside-toplevel
    manual = tmp_path / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    with pytest.raises(AssertionError, match="Manual directory"):  # TFDS: empty manual dir
        prepare.prepare("affwild2", manual, tmp_path / "tfds")
    with pytest.raises(ValueError, match="would mix outputs with the input"):
        prepare.prepare("affwild2", tmp_path, tmp_path / "records")


def test_beam_runner_without_apache_beam_builds_in_process(tmp_path, caplog, monkeypatch):
    # None in sys.modules makes `import apache_beam` fail, whether it is installed or not.
    from fer_tf.data import prepare  # pylint: disable=import-outside-toplevel
    monkeypatch.setitem(sys.modules, "apache_beam", None)
    root = dataset_trees.write_affwild2_2020(tmp_path / "manual")
    with caplog.at_level(logging.INFO, logger="absl"):
        counts = prepare.prepare("affwild2", root, tmp_path / "asked", beam_runner="DirectRunner",
                                 beam_options=["--direct_num_workers=1"])
    assert counts == {"train": 11, "validation": 3}
    assert [m for m in caplog.messages if "Beam" in m] == [
        "apache-beam is not installed (pip install 'fer_tf[beam]'): building in this "
        "process without Beam"]
    tfds_builders.build("affwild2", root, tmp_path / "plain")
    shards = sorted((tmp_path / "plain").rglob("*.tfrecord-*"))
    assert [p.read_bytes() for p in shards] == [
        (tmp_path / "asked" / p.relative_to(tmp_path / "plain")).read_bytes() for p in shards]
