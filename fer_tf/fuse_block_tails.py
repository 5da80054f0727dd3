"""Fuse each SE block's tail into one XLA-compiled kernel, for inference.

An SE bottleneck ends with three element-wise passes over its output map: the
excitation ``u * gate``, the residual ``+ shortcut`` and the ReLU. TensorFlow runs
each as its own kernel (oneDNN fuses element-wise work into convolutions only, and
only the projection blocks' add follows a convolution), so every block reads and
writes its map three times; in bfloat16 those passes are a large share of a
48x48 network's time (the README's speed row). `fuse_block_tails(model)` replaces
each Multiply -> Add -> ReLU chain by one `ExciteAddRelu` layer whose computation is
an XLA-compiled function (``jit_compile=True``): one pass, the same arithmetic.
The convolutions stay with oneDNN. Training always uses the original model, and
`fer_tf.export` does not fuse: converters to TFLite and ONNX take no XLA calls.
"""

import collections

import keras
import tensorflow as tf
from keras import layers


@tf.function(jit_compile=True)
def _excite_add_relu(u, gate, shortcut):
    return tf.nn.relu(u * gate + shortcut)


@keras.saving.register_keras_serializable(package="fer_tf")
class ExciteAddRelu(layers.Layer):
    """relu(u * gate + shortcut) of ``[u, gate, shortcut]``, in one compiled pass."""

    def call(self, inputs):
        u, gate, shortcut = inputs
        return _excite_add_relu(u, gate, shortcut)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def _history(tensor_config):
    return tensor_config["config"]["keras_history"][0]


def _args(layer_config):
    """The call arguments of a layer called once: a list of serialized tensors."""
    nodes = layer_config["inbound_nodes"]
    if len(nodes) != 1:
        return None
    args = nodes[0]["args"]
    return list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)


def _fused_config(config: dict) -> tuple:
    """(the functional config with every single-reader Multiply -> Add -> ReLU chain
    replaced by an ExciteAddRelu named as the ReLU, number of chains fused)."""
    by_name = {layer["name"]: layer for layer in config["layers"]}
    readers = collections.Counter(_history(t) for layer in config["layers"]
                                  for t in _args(layer) or [] if isinstance(t, dict))
    outputs = config["output_layers"]
    readers.update(t[0] for t in (outputs if isinstance(outputs[0], list) else [outputs]))
    dropped, replaced = set(), {}
    for layer in config["layers"]:
        relu_args = _args(layer)
        if layer["class_name"] != "ReLU" or layer["config"].get("max_value") is not None \
                or layer["config"].get("negative_slope") or layer["config"].get("threshold") \
                or not relu_args or len(relu_args) != 1:
            continue
        add = by_name[_history(relu_args[0])]
        add_args = _args(add)
        if add["class_name"] != "Add" or readers[add["name"]] != 1 or len(add_args or []) != 2:
            continue
        excite = by_name[_history(add_args[0])]
        if excite["class_name"] != "Multiply" or readers[excite["name"]] != 1 \
                or len(_args(excite) or []) != 2:
            continue
        fused = keras.saving.serialize_keras_object(
            ExciteAddRelu(name=layer["name"], dtype=layer["config"]["dtype"]))
        fused.update(name=layer["name"], inbound_nodes=[
            {"args": [_args(excite) + [add_args[1]]], "kwargs": {}}])
        replaced[layer["name"]] = fused
        dropped.update((add["name"], excite["name"]))
    new_layers = [replaced.get(layer["name"], layer) for layer in config["layers"]
                  if layer["name"] not in dropped]
    return {**config, "layers": new_layers}, len(replaced)


def _fuse(model: keras.Model) -> keras.Model:
    config, _ = _fused_config(model.get_config())
    fused = model.__class__.from_config(config)
    for layer in fused.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return fused


def fuse_block_tails(model: keras.Model) -> keras.Model:
    """An inference copy of a functional model whose nested functional models (the
    backbone) have their SE block tails fused (`ExciteAddRelu`).

    Args:
      model: a functional ``keras.Model``, e.g. from `fer_tf.model.load_expression_model`
        (fuse before `fer_tf.fold_batch_norm`, whose copies do not serialize).

    Returns:
      A new model with the same inputs, outputs and weights, equal in inference up to
      float rounding (XLA may keep ``u * gate`` unrounded before the add).
    """
    def clone_layer(layer):
        if isinstance(layer, keras.Model):
            return _fuse(layer)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    for original, new in zip(model.layers, copy.layers):
        if new.weights and not isinstance(new, keras.Model):
            new.set_weights(original.get_weights())
    return copy


def count_fused(model: keras.Model) -> int:
    """How many `ExciteAddRelu` layers ``model`` (and its nested models) holds."""
    return sum(count_fused(layer) if isinstance(layer, keras.Model)
               else isinstance(layer, ExciteAddRelu) for layer in model.layers)
