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


@pytest.fixture(scope="module")
def contract_model_file(tmp_path_factory):
    """A saved random fer48_w16 model with a FER2013-style contract (48, gray, no margin)."""
    import keras  # pylint: disable=import-outside-toplevel

    from fer_tf import model as model_lib  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(4)
    model = model_lib.build_expression_model("fer48_w16", decode_size=48, grayscale=True,
                                             crop_margin=0.0)
    path = tmp_path_factory.mktemp("contract") / "fer48.keras"
    model.save(path)
    return path, model


@pytest.fixture(scope="session")
def fer2013_dir() -> pathlib.Path:
    """The real FER2013 image folders (train/, test/)."""
    return _require(SHARED_DATA / "fer2013", "FER2013 data")


@pytest.fixture(scope="session")
def faces_dir() -> pathlib.Path:
    """A few real face photographs."""
    return _require(SHARED_DATA / "faces", "face photos")


def _write_huge_png(path, width=16000, height=16000):
    """A real, valid PNG of width x height black gray pixels, streamed (it compresses to
    under 1 MB; decoded it would take width * height * 3 bytes)."""
    import struct  # pylint: disable=import-outside-toplevel
    import zlib  # pylint: disable=import-outside-toplevel

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + gray pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def huge_png(tmp_path) -> pathlib.Path:
    """A valid 16000x16000 PNG of under 1 MB (a decompression bomb for naive decoders)."""
    return _write_huge_png(tmp_path / "huge.png")
