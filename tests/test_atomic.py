"""Atomic output: the target is either untouched or complete, and no temporary file is left."""

import json
import os
import shutil

import pytest

from fer_tf import atomic


def test_writes_text_json_and_bytes(tmp_path):
    atomic.write_text(tmp_path / "a" / "x.txt", "one\ntwo\n")
    atomic.write_json(tmp_path / "r.json", {"b": 1, "a": [1.5]}, sort_keys=True)
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "a" / "x.txt").read_bytes() == b"one\ntwo\n"
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1.5], "b": 1}
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(os.listdir(tmp_path)) == ["a", "b.bin", "r.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.output_path(target, ".json") as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]


def test_temporary_keeps_the_requested_suffix(tmp_path):
    with atomic.output_path(tmp_path / "m.keras", ".keras") as tmp:
        assert tmp.endswith(".keras") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "w").close()
    assert os.listdir(tmp_path) == ["m.keras"]


def test_leftovers_of_interrupted_writes_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "best_model.keras"
    with pytest.raises(RuntimeError):
        with atomic.output_path(target, ".keras") as tmp:
            open(tmp, "wb").close()
            leftover = tmp + ".copy"  # what a kill -9 leaves: the context never cleans up
            shutil.copy(tmp, leftover)
            raise RuntimeError("killed")
    keep = [tmp_path / "best_model.keras.bak", tmp_path / ".best_model.keras.notes",
            tmp_path / ".result.json.12-0123abcd.tmp"]
    for path in keep:
        path.write_text("mine\n")
    assert atomic.remove_leftovers(target) == [leftover]
    assert all(path.exists() for path in keep)


def test_check_output_rules(tmp_path):
    source = tmp_path / "in.jpg"
    source.write_bytes(b"x")
    with pytest.raises(ValueError, match="is also an input"):
        atomic.check_output(source, [source])
    with pytest.raises(FileExistsError, match="--overwrite"):
        atomic.check_output(source, [])
    assert atomic.check_output(source, [], overwrite=True) == str(source)
    with pytest.raises(ValueError, match="is a folder"):
        atomic.check_output(tmp_path, [])
    assert atomic.check_output(tmp_path / "new" / "deep" / "out.csv", []).endswith("out.csv")


def test_check_output_dir_rules(tmp_path):
    data = tmp_path / "data"
    (data / "happy").mkdir(parents=True)
    model = tmp_path / "run" / "best_model.keras"
    model.parent.mkdir()
    model.write_bytes(b"x")
    inputs = [data, model]
    for mixed in (data, data / "happy", data / "happy" / "report", tmp_path):
        with pytest.raises(ValueError, match="would mix outputs with the input"):
            atomic.check_output_dir(mixed, ["report.json"], inputs)
    with pytest.raises(ValueError, match="would mix outputs with the input"):
        atomic.check_output_dir(model.parent, ["best_model.keras"], inputs)
    # Beside the model, in its training workdir, is fine: other files are left alone.
    atomic.check_output_dir(model.parent, ["report.json"], inputs)
    out = tmp_path / "out"
    assert atomic.check_output_dir(out, ["report.json"], inputs) == str(out)
    assert not out.exists()  # checking creates nothing
    out.mkdir()
    (out / "other.txt").write_text("kept")
    atomic.check_output_dir(out, ["report.json"], inputs)  # unrelated files are fine
    (out / "report.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds report.json; pass --overwrite"):
        atomic.check_output_dir(out, ["report.json"], inputs)
    atomic.check_output_dir(out, ["report.json"], inputs, overwrite=True)
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        atomic.check_output_dir(out / "other.txt", ["report.json"], inputs)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        atomic.check_output_dir(out / "other.txt" / "sub", ["report.json"], inputs)
