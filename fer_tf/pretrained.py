"""Models shipped inside the package, selectable by a short name.

    python -m fer_tf.pretrained --src=runs/fer2013 --dst=fer_tf/models/fer2013.keras

writes a training run's best model as a compact shipped file (`save_compact`).

``fer2013`` is the default for prediction, evaluation, export and the Python API: a
small SE-ResNet trained on FER2013 (research use only; see the model card in the
README). ``fer2013_fast`` has half its depth and was distilled from it
(`fer_tf.distill`, ``configs/fer2013_fast.cfg``): about 1.6 times the speed for about half
a point of PublicTest accuracy (README). The files live in ``fer_tf/models/`` as package
data, so they load without a network and without a training workdir; each carries its
input contract (`fer_tf.model.FacePreprocessing`).
"""

import io
import json
import os
import tempfile
import zipfile
from typing import Optional

import h5py
import numpy as np
from absl import app, flags

from fer_tf import atomic, cli
from fer_tf import model as model_lib

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

# Short name -> file in MODELS_DIR.
SHIPPED = {"fer2013": "fer2013.keras", "fer2013_fast": "fer2013_fast.keras"}
DEFAULT = "fer2013"


def shipped_path(name: str = DEFAULT) -> str:
    """The file of a shipped model.

    Raises:
      ValueError: an unknown name.
      FileNotFoundError: the package was installed without its model files.
    """
    if name not in SHIPPED:
        raise ValueError(f"no shipped model named {name!r}; shipped: {sorted(SHIPPED)}")
    path = os.path.join(MODELS_DIR, SHIPPED[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"shipped model {name!r} missing at {path}: the package was installed without its "
            "data files; reinstall fer_tf (pip install -e .) or pass --model=WORKDIR|MODEL.keras")
    return path


def model_flag_help(also: str) -> str:
    """The help text of a command's --model flag: the shipped names, then ``also``."""
    return (f"Shipped model name ({', '.join(SHIPPED)}: inside the package; default "
            f"{DEFAULT}), {also}.")


def resolve(model: Optional[str]) -> str:
    """A model argument as a path: None or '' -> the default shipped model, a shipped
    name -> its file, anything else unchanged (a workdir, .keras file or SavedModel)."""
    if not model:
        return shipped_path(DEFAULT)
    if model in SHIPPED and not os.path.exists(model):
        return shipped_path(model)
    return os.fspath(model)


def describe(model: Optional[str]) -> str:
    """How the log names a model argument ("shipped model 'fer2013' (path)" or the path)."""
    path = resolve(model)
    for name, file in SHIPPED.items():
        if os.path.abspath(path) == os.path.join(MODELS_DIR, file):
            return f"shipped model {name!r} ({path})"
    return path


def _float32_policies(node):
    """A copy of a saved model config with every mixed-precision dtype policy made float32.

    A model trained under mixed_bfloat16 keeps float32 variables, so only its compute
    policy changes: bfloat16 is fast on CPUs with AVX-512 BF16 but emulated, and several
    times slower, on most others, where a shipped model must run well.
    """
    if isinstance(node, list):
        return [_float32_policies(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("class_name") == "DTypePolicy" and str(
            node.get("config", {}).get("name", "")).startswith("mixed_"):
        return {**node, "config": {**node["config"], "name": "float32"}}
    return {key: _float32_policies(value) for key, value in node.items()}


def save_compact(model, path):
    """Saves a `.keras` file whose conv and dense kernels are stored as float16.

    The file is a standard `.keras` archive that `keras.saving.load_model` reads as
    usual: Keras casts each stored array to its float32 variable on load. Kernels
    (rank >= 2, nearly all parameters) are rounded to float16 (relative error at most
    2**-11); biases, BatchNorm parameters and statistics and every non-float32 array
    stay exact. Halves the file, which is what lets the shipped model stay small.
    A model trained in mixed precision is stored to compute in float32
    (`_float32_policies`). Written atomically.
    """
    with tempfile.TemporaryDirectory() as tmp:
        full = os.path.join(tmp, "full.keras")
        model.save(full)
        with zipfile.ZipFile(full) as source:
            members = {name: source.read(name) for name in source.namelist()}
    members["config.json"] = json.dumps(
        _float32_policies(json.loads(members["config.json"]))).encode()
    weights = io.BytesIO(members["model.weights.h5"])
    compact = io.BytesIO()
    with h5py.File(weights, "r") as src, h5py.File(compact, "w") as dst:
        def copy(name, item):
            if isinstance(item, h5py.Group):
                group = dst.require_group(name)
                group.attrs.update(item.attrs)
                return
            data = item[()]
            if data.dtype == np.float32 and data.ndim >= 2:
                data = data.astype(np.float16)
            dst.create_dataset(name, data=data)
            dst[name].attrs.update(item.attrs)
        dst.attrs.update(src.attrs)
        src.visititems(copy)
    members["model.weights.h5"] = compact.getvalue()
    with atomic.output_path(os.fspath(path), ".keras") as out:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    return os.fspath(path)


def define_flags():
    """The command's flags: --src, --dst, --overwrite."""
    flags.DEFINE_string("src", None, "Training workdir (its best_model.keras) or .keras file.")
    flags.DEFINE_string("dst", None, "The compact .keras file to write, e.g. "
                        "fer_tf/models/fer2013.keras.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --dst file.")
    flags.mark_flags_as_required(["src", "dst"])


def main(argv):
    """Writes the compact copy of --src to --dst."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    src, dst = flags.FLAGS.src, flags.FLAGS.dst
    source = model_lib.resolve_model_file(src)
    atomic.check_output(dst, [source], flags.FLAGS.overwrite, flag="--dst")
    save_compact(model_lib.load_expression_model(source), dst)
    print(f"{dst}: {os.path.getsize(dst) / 1e6:.2f} MB (from {source})")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.pretrained")
