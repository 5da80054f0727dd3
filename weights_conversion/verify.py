"""Runs the PyTorch reference on the source weights and the Keras port on the converted
ones, with the same random image, and measures the relative error per stage."""

import numpy as np

from fer_tf.preprocessing import VGGFACE2_MEAN_BGR
from weights_conversion import layout


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 when both are 0)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected))
    diff = np.max(np.abs(actual - expected))
    return float(diff / scale) if scale > 0 else float(diff)


def keras_stage_model(model):
    """The Keras model with outputs at the same points as `TorchSENet.stages`."""
    import keras

    blocks, _ = _keras_blocks(model)
    outputs = {"stem": model.get_layer("maxpool").output}
    for stage, n in enumerate(blocks, start=1):
        outputs[f"layer{stage}"] = model.get_layer(f"layer{stage}_{n - 1}_relu").output
    outputs["pooled"] = model.get_layer("avgpool").output
    if any(layer.name == "fc" for layer in model.layers):
        outputs["logits"] = model.get_layer("fc").output
    return keras.Model(model.input, outputs)


def _keras_blocks(model):
    counts = {}
    for layer in model.layers:
        if layer.name.startswith("layer") and layer.name.endswith("_conv1"):
            stage, block = layer.name[len("layer"):].split("_")[:2]
            counts[int(stage)] = max(counts.get(int(stage), 0), int(block) + 1)
    return tuple(counts[s] for s in sorted(counts)), model.get_layer("conv1").filters


def compare_with_torch(source_arrays, fmt, keras_model, batch=2, seed=0):
    """Relative errors (per stage, pooled feature, logits) of Keras vs the PyTorch reference.

    Args:
      source_arrays: the release's arrays as read from disk (pkl or dag names).
      fmt: 'pkl' or 'dag'. The dag reference is fed RGB minus the RGB mean, the
        Keras model the same image as BGR minus the BGR mean.
      keras_model: the converted Keras SE-ResNet (with or without fc).
      batch: images in the random batch (at least 2 catches batch-mixing bugs).
      seed: numpy seed of the random image.

    Returns:
      {stage name: relative error}.
    """
    import torch

    from weights_conversion import torch_senet

    torch_arrays = source_arrays
    if fmt == "dag":
        torch_arrays = layout.dag_to_pkl_arrays(source_arrays, to_bgr=False)
    blocks, base_width, classes = layout.infer_architecture(torch_arrays)
    reference = torch_senet.SENet(blocks, base_width, classes or 1, include_top=classes is not None)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in torch_arrays.items()}
    # Strict but for BatchNorm's step counters, which some releases omit and which no
    # output depends on.
    keys = reference.load_state_dict(state, strict=False)
    missing = [k for k in keys.missing_keys if not k.endswith(".num_batches_tracked")]
    if missing or keys.unexpected_keys:
        raise layout.ConversionError(
            f"the PyTorch reference does not take these tensors exactly: missing {missing}, "
            f"unexpected {keys.unexpected_keys}")
    reference.eval()

    h, w = keras_model.input_shape[1:3]
    rgb = np.random.default_rng(seed).uniform(0, 255, size=(batch, h, w, 3)).astype(np.float32)
    keras_input = rgb[..., ::-1] - np.asarray(VGGFACE2_MEAN_BGR, np.float32)
    torch_input = keras_input if fmt == "pkl" else keras_input[..., ::-1]
    with torch.no_grad():
        expected = reference.stages(torch.from_numpy(np.ascontiguousarray(torch_input.transpose(0, 3, 1, 2))))
    actual = keras_stage_model(keras_model).predict(keras_input, verbose=0)
    errors = {}
    for name, value in expected.items():
        value = value.numpy()
        if value.ndim == 4:
            value = value.transpose(0, 2, 3, 1)
        errors[name] = relative_error(actual[name], value)
    return errors
