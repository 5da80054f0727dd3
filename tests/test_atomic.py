"""Atomic output: the target is either untouched or complete, and no temporary file is left."""

import json
import os

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
