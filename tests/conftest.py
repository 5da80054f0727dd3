"""Shared fixtures: where the real data in ../shared lives, and absl flags."""

import os
import pathlib

import pytest
from absl import flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("FER_TF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)

# Library code never reads flags, but entry points do; tests call them directly.
flags.FLAGS.mark_as_parsed()


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
    if not path.is_dir():
        pytest.skip(f"{what} not found at {path} (CI has ../shared/data; set FER_TF_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def fer2013_dir() -> pathlib.Path:
    """The real FER2013 image folders (train/, test/)."""
    return _require(SHARED_DATA / "fer2013", "FER2013 data")


@pytest.fixture(scope="session")
def faces_dir() -> pathlib.Path:
    """A few real face photographs."""
    return _require(SHARED_DATA / "faces", "face photos")
