"""Name rules between the Keras port and the two PyTorch releases.

Keras layer names are the `.pkl` release's module paths with `.` -> `_`; the Oxford
`dag` imports use Caffe names (docs/senet50.md, "Tensor names").
"""

import re

BN_LEAVES = ("weight", "bias", "running_mean", "running_var")

# Bottleneck sub-module (pkl) -> Caffe suffix (dag).
_BLOCK_TO_DAG = {
    "conv1": "1x1_reduce",
    "bn1": "1x1_reduce_bn",
    "conv2": "3x3",
    "bn2": "3x3_bn",
    "conv3": "1x1_increase",
    "bn3": "1x1_increase_bn",
    "conv4": "1x1_down",
    "conv5": "1x1_up",
    "downsample.0": "1x1_proj",
    "downsample.1": "1x1_proj_bn",
}
_STEM_TO_DAG = {"conv1": "conv1_7x7_s2", "bn1": "conv1_7x7_s2_bn", "fc": "classifier"}
_DAG_TO_PKL = {v: k for k, v in _STEM_TO_DAG.items()}

_PKL_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_DAG_BLOCK = re.compile(r"^conv(\d+)_(\d+)_(.+)$")


def keras_to_pkl_module(layer_name: str) -> str:
    """`layer2_0_downsample_0` -> `layer2.0.downsample.0` (pkl names have no `_`)."""
    return layer_name.replace("_", ".")


def pkl_to_dag_module(module: str) -> str:
    """`layer2.0.conv1` -> `conv3_1_1x1_reduce`; `fc` -> `classifier`."""
    if module in _STEM_TO_DAG:
        return _STEM_TO_DAG[module]
    m = _PKL_BLOCK.match(module)
    if not m or m.group(3) not in _BLOCK_TO_DAG:
        raise ValueError(f"no dag name for module {module!r}")
    stage, block, sub = int(m.group(1)) + 1, int(m.group(2)) + 1, m.group(3)
    return f"conv{stage}_{block}_{_BLOCK_TO_DAG[sub]}"


def dag_to_pkl_module(module: str):
    """Inverse of `pkl_to_dag_module`; None for names outside the SENet-50 scheme."""
    if module in _DAG_TO_PKL:
        return _DAG_TO_PKL[module]
    m = _DAG_BLOCK.match(module)
    if not m:
        return None
    stage, block, suffix = int(m.group(1)), int(m.group(2)), m.group(3)
    for sub, dag_suffix in _BLOCK_TO_DAG.items():
        if dag_suffix == suffix:
            return f"layer{stage - 1}.{block - 1}.{sub}"
    return None


def split_tensor_name(name: str):
    """`layer1.0.bn1.running_mean` -> (`layer1.0.bn1`, `running_mean`)."""
    for leaf in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
        if name.endswith("." + leaf):
            return name[: -len(leaf) - 1], leaf
    return name, ""
