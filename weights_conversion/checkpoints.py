"""Reading (and, for tests, writing) the VGGFace2 SENet-50 releases' on-disk formats.

- `pkl`: VGGFace2-pytorch's `senet50_*_weight.pkl`, a Python-2 pickle of
  {state_dict name: numpy array}. Loaded with a restricted unpickler (no torch
  needed) that builds numpy arrays and dicts only: a pickle naming any other global
  (``os.system`` in a crafted file) is refused before anything runs. Needs
  `encoding="latin1"` because the array bytes were pickled as Python-2 `str`.
- `dag`: Oxford pytorch-mcn's `senet50_*_dag.pth`, a `torch.save`d state dict with
  Caffe names, an RGB first conv and a 1x1-conv classifier (needs torch).
"""

import io
import pickle
import struct
import zipfile

import numpy as np

from weights_conversion import names

FORMATS = ("pkl", "dag")


class NotACheckpointError(ValueError):
    """The file is not a SENet-50 state dict in either release format."""


def _is_torch_zip(path) -> bool:
    return zipfile.is_zipfile(path)


# The globals a pickled {name: numpy array} dict needs (numpy 1 and 2 module names).
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),
})


class UnsafeCheckpointError(NotACheckpointError):
    """The pickle asks for code the weights release never needs; nothing was run."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"{self._path}: refused: the pickle asks for {module}.{name}, which a weights "
                "file never needs (only numpy arrays in a dict); it may be crafted to run code. "
                "Use the release from its original source")
        return super().find_class(module, name)


def _load_pickle(path):
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head == b"PK":  # a zip that zipfile cannot open: its end (directory) is missing
            raise NotACheckpointError(
                f"{path}: a truncated or damaged torch.save (zip) file; download it again "
                "(compare its size or checksum with the release's)")
        if not head.startswith(b"\x80"):
            raise NotACheckpointError(
                f"{path}: not a pickle or a torch.save file (first bytes {head!r}); expected "
                "senet50_*_weight.pkl (VGGFace2-pytorch) or senet50_*_dag.pth (pytorch-mcn)"
            )
        try:
            return _ArraysOnlyUnpickler(f, path).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # Truncated files, foreign classes, legacy torch files.
            raise NotACheckpointError(f"{path}: could not unpickle ({type(e).__name__}: {e})") from e


def _load_torch(path):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a torch.save file (the dag release); reading it needs PyTorch: "
            "pip install 'fer_tf[torch]' (CPU build: pip install torch)"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise NotACheckpointError(f"{path}: torch.load failed ({type(e).__name__}: {e})") from e
    return obj


def _to_numpy_dict(obj, path):
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj:
        raise NotACheckpointError(
            f"{path}: expected a non-empty dict of tensors (a state dict), got {type(obj).__name__}"
        )
    arrays = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise NotACheckpointError(f"{path}: state dict key {key!r} is not a string")
        if hasattr(value, "detach"):  # torch.Tensor
            value = value.detach().cpu().numpy()
        if not isinstance(value, np.ndarray):
            raise NotACheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not an array"
            )
        arrays[key] = value
    return arrays


def detect_format(arrays) -> str:
    """'pkl' or 'dag' from the tensor names."""
    if "conv1_7x7_s2.weight" in arrays or "classifier.weight" in arrays:
        return "dag"
    if "conv1.weight" in arrays:
        return "pkl"
    sample = ", ".join(sorted(arrays)[:5])
    raise NotACheckpointError(
        f"neither SENet-50 release: no 'conv1.weight' (pkl) or 'conv1_7x7_s2.weight' (dag); "
        f"first names: {sample}"
    )


def read_checkpoint(path, fmt="auto"):
    """Reads a release file into ({name: numpy array}, format).

    Args:
      path: a `.pkl` or `.pth` file.
      fmt: 'auto', 'pkl' or 'dag'.

    Raises:
      NotACheckpointError: the file is not a state dict of either release.
    """
    path = str(path)
    if fmt not in ("auto",) + FORMATS:
        raise ValueError(f"format must be auto, pkl or dag, got {fmt!r}")
    obj = _load_torch(path) if _is_torch_zip(path) else _load_pickle(path)
    arrays = _to_numpy_dict(obj, path)
    try:
        detected = detect_format(arrays)
    except NotACheckpointError as e:
        raise NotACheckpointError(f"{path}: {e}") from None
    if fmt != "auto" and fmt != detected:
        raise NotACheckpointError(f"{path}: --format={fmt} was given but the names are {detected}'s")
    return arrays, detected


def sha256(path, chunk=1 << 20) -> str:
    """Hex SHA-256 of a file."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Writers, for tests and for users who want to re-export a reference model.


class _Python2Pickler(pickle._Pickler):  # pure-Python pickler: overridable dispatch
    """Writes `bytes` as Python-2 `str` opcodes, as the VGGFace2-pytorch release does.

    Such a pickle loads in Python 3 only with `encoding="latin1"` (numpy turns the
    latin1 string back into the array's bytes), which is the release's quirk.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_pkl(arrays, path):
    """Writes {name: numpy array} as a protocol-2, Python-2-style pickle (the `.pkl` release)."""
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump({k: np.asarray(v) for k, v in arrays.items()})
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def pkl_to_dag_arrays(arrays):
    """Renames pkl-release arrays to the dag release's layout.

    Caffe names, BGR->RGB first conv (dag models take RGB input), and the classifier
    as a (classes, 2048, 1, 1) 1x1 conv.
    """
    out = {}
    for name, value in arrays.items():
        module, leaf = names.split_tensor_name(name)
        if leaf == "num_batches_tracked":
            continue
        value = np.asarray(value)
        if name == "conv1.weight":
            value = value[:, ::-1].copy()
        if name == "fc.weight":
            value = value.reshape(value.shape + (1, 1))
        out[f"{names.pkl_to_dag_module(module)}.{leaf}"] = value
    return out


def write_dag(arrays, path):
    """Writes pkl-named arrays as a dag-release `.pth` state dict (needs torch)."""
    import torch

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pkl_to_dag_arrays(arrays).items()}
    torch.save(state, path)


def torch_state_to_arrays(module):
    """A torch module's state dict as numpy arrays, without `num_batches_tracked`."""
    return {
        k: v.detach().cpu().numpy().copy()
        for k, v in module.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
