"""Converts a VGGFace2 SENet-50 release into a Keras weights file, strictly.

Every source tensor must be used exactly once and every Keras weight set, or one
error lists all missing, unused and mis-shaped tensors. The output is written to
a temporary file and renamed, so a failed conversion leaves nothing at `dst`.
"""

import os

import keras
import numpy as np
from absl import logging

from fer_tf import atomic, senet
from weights_conversion import checkpoints, names, verify as verify_lib
from weights_conversion.layout import ConversionError, dag_to_pkl_arrays, infer_architecture

INPUT_CONVENTION = "BGR, 0-255, minus VGGFace2 mean (B 91.4953, G 103.8827, R 131.0912)"


def _keras_values(layer, module, arrays):
    """The source arrays for one Keras layer, in the layer's weight order (Keras layout)."""
    # By base class: fer_tf's TorchBatchNorm is a BatchNormalization.
    kind = next((base.__name__ for base in (keras.layers.Conv2D, keras.layers.BatchNormalization,
                                           keras.layers.Dense) if isinstance(layer, base)),
                type(layer).__name__)
    if kind == "Conv2D":
        leaves = ["weight"] + (["bias"] if layer.use_bias else [])
    elif kind == "BatchNormalization":
        leaves = list(names.BN_LEAVES)  # gamma, beta, moving_mean, moving_variance
    elif kind == "Dense":
        leaves = ["weight", "bias"]
    else:
        raise ConversionError(f"layer {layer.name} ({kind}) has weights but no conversion rule")
    values = []
    for leaf in leaves:
        key = f"{module}.{leaf}"
        value = arrays.get(key)
        if value is not None and leaf == "weight" and kind == "Conv2D" and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif value is not None and leaf == "weight" and kind == "Dense" and value.ndim == 2:
            value = value.T
        values.append((key, value))
    return values


def assign_weights(model, arrays):
    """Sets every weight of `model` from pkl-named `arrays`, strictly.

    Raises:
      ConversionError: listing every missing, unused and mis-shaped tensor.
    """
    arrays = {k: v for k, v in arrays.items() if not k.endswith(".num_batches_tracked")}
    used, missing, misshaped, assignments = set(), [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        module = names.keras_to_pkl_module(layer.name)
        pairs = _keras_values(layer, module, arrays)
        for (key, value), variable in zip(pairs, layer.weights):
            if value is None:
                missing.append(f"{key} (Keras {variable.path} {tuple(variable.shape)})")
                continue
            used.add(key)
            if tuple(value.shape) != tuple(variable.shape):
                misshaped.append(
                    f"{key}: source {tuple(arrays[key].shape)} -> {tuple(value.shape)} in Keras "
                    f"layout, Keras {variable.path} expects {tuple(variable.shape)}"
                )
                continue
            assignments.append((variable, value))
    unused = sorted(set(arrays) - used)
    if missing or unused or misshaped:
        lines = [f"source tensors do not match the Keras {model.name}:"]
        for title, items in (("missing", missing), ("unused", unused), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise ConversionError("\n".join(lines))
    for variable, value in assignments:
        variable.assign(value.astype(np.float32))
    return len(assignments)


def build_model_for(arrays, input_shape=(224, 224, 3)):
    """An SE-ResNet (random weights) whose shapes fit pkl-named `arrays`."""
    blocks, base_width, classes = infer_architecture(arrays)
    return senet.se_resnet(
        blocks,
        base_width,
        include_top=classes is not None,
        classes=classes or 1,
        input_shape=input_shape,
        name="senet50" if (blocks, base_width) == (senet.SENET50_BLOCKS, 64) else "senet",
    )


def convert(src, dst, fmt="auto", verify=False, verify_tolerance=1e-5, overwrite=False):
    """Converts release file `src` into Keras weights `dst` (+ metadata JSON beside it).

    Args:
      src: `senet50_*_weight.pkl` or `senet50_*_dag.pth`.
      dst: output path ending in `.weights.h5`.
      fmt: 'auto', 'pkl' or 'dag'.
      verify: also run the PyTorch reference on the source weights and compare.
      verify_tolerance: maximum relative error of logits and pooled features.
      overwrite: replace an existing `dst` (and its metadata JSON).

    Returns:
      The metadata dict written beside `dst`.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if not dst.endswith(".weights.h5"):
        raise ValueError(f"--dst must end with .weights.h5 (Keras weights file), got {dst!r}")
    if not os.path.isfile(src):
        raise FileNotFoundError(
            f"source weights {src!r} not found; expected senet50_ft_weight.pkl (VGGFace2-pytorch) "
            "or senet50_ft_dag.pth / senet50_ferplus_dag.pth (Oxford pytorch-mcn)"
        )
    for out in (dst, senet.metadata_path(dst)):  # before the (slow) read
        atomic.check_output(out, [src], overwrite, flag="--dst")
    logging.info("Reading %s", src)
    source_arrays, detected = checkpoints.read_checkpoint(src, fmt)
    arrays = source_arrays
    if detected == "dag":
        logging.info("dag release: renaming Caffe tensors; reversing conv1 input channels RGB -> BGR")
        arrays = dag_to_pkl_arrays(source_arrays)
    arrays = {k: v for k, v in arrays.items() if not k.endswith(".num_batches_tracked")}
    model = build_model_for(arrays)
    count = assign_weights(model, arrays)
    n_values = int(sum(np.asarray(v).size for v in arrays.values()))
    logging.info("Set %d Keras weights (%d values) from %d source tensors", count, n_values, len(arrays))
    blocks, base_width, classes = infer_architecture(arrays)
    metadata = {
        "source": os.path.basename(src),
        "source_sha256": checkpoints.sha256(src),
        "format": detected,
        "blocks": list(blocks),
        "base_width": base_width,
        "classes": classes,
        "num_values": n_values,
        "input_convention": INPUT_CONVENTION,
    }
    if verify:
        errors = verify_lib.compare_with_torch(source_arrays, detected, model)
        metadata["verification_relative_error"] = errors
        worst = max(errors.values())
        logging.info("Verification against PyTorch: %s", errors)
        if worst > verify_tolerance:
            raise ConversionError(
                f"verification failed: relative error {errors} exceeds {verify_tolerance}"
            )
    with atomic.output_path(dst, ".weights.h5") as tmp:
        model.save_weights(tmp)
    atomic.write_json(senet.metadata_path(dst), metadata)
    logging.info("Wrote %s and %s", dst, senet.metadata_path(dst))
    return metadata
