"""What a release's arrays say: pkl names from dag ones, and the architecture from the names.

Shared by the converter and the PyTorch check (`verify`), which both read release arrays.
"""

import re

import numpy as np

from weights_conversion import names


class ConversionError(ValueError):
    """The source tensors do not match the Keras model exactly."""


def dag_to_pkl_arrays(arrays, to_bgr=True):
    """Renames dag-release arrays to pkl names and the project's BGR input convention.

    The dag first conv takes RGB; reversing its input channels (`to_bgr`) makes the
    converted model take BGR like the pkl release (one input convention for the
    project). Unknown names are kept as they are so the strict check can report them.
    """
    out = {}
    for name, value in arrays.items():
        module, leaf = names.split_tensor_name(name)
        pkl_module = names.dag_to_pkl_module(module) if leaf else None
        if pkl_module is None:
            out[name] = value
            continue
        if to_bgr and pkl_module == "conv1" and leaf == "weight" and value.ndim == 4 and value.shape[1] == 3:
            value = value[:, ::-1]
        if pkl_module == "fc" and leaf == "weight" and value.ndim == 4:
            value = value.reshape(value.shape[:2])
        out[f"{pkl_module}.{leaf}"] = np.ascontiguousarray(value)
    return out


def infer_architecture(arrays):
    """(blocks per stage, base width, classes or None) from pkl-named arrays."""
    if "conv1.weight" not in arrays:
        raise ConversionError("no 'conv1.weight': cannot infer the architecture")
    base_width = int(arrays["conv1.weight"].shape[0])
    blocks = []
    stage = 1
    while True:
        pattern = re.compile(rf"^layer{stage}\.(\d+)\.conv1\.weight$")
        indices = [int(m.group(1)) for k in arrays if (m := pattern.match(k))]
        if not indices:
            break
        blocks.append(max(indices) + 1)
        stage += 1
    if not blocks:
        raise ConversionError("no 'layer1.*' tensors: not an SE-ResNet state dict")
    classes = int(arrays["fc.weight"].shape[0]) if "fc.weight" in arrays else None
    return tuple(blocks), base_width, classes
