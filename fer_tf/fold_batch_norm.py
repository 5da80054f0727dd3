"""Fold inference-mode BatchNormalization into the convolution before it.

In inference a BatchNormalization after a convolution is an affine map per channel,
``y = (x - mean) * gamma / sqrt(var + eps) + beta``, so it can be moved into the
convolution's kernel and bias: ``W' = W * s``, ``b' = (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. Keras runs the normalisation as separate element-wise
passes over every activation map, and the graph TensorFlow runs keeps them (the folded
model measured faster on CPU: the README's benchmarks table); it is equal up to float32
rounding.

`fold_batch_norms(model)` returns a new model for inference only: it has no
BatchNormalization left where a fold is exact (a linear Conv2D whose only reader is
the BatchNormalization), and the same layer names otherwise. Training always uses the
original model.
"""

import collections

import keras
import numpy as np
from keras import layers


class _Folded(layers.Layer):
    """Stands where a folded BatchNormalization was: passes its input through."""

    def call(self, inputs, training=None, mask=None):
        del training, mask
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _input_layer_names(node_args):
    """Names of the layers whose outputs a serialized call's arguments refer to."""
    if isinstance(node_args, dict):
        if "keras_history" in node_args:
            return [node_args["keras_history"][0]]
        return [n for value in node_args.values() for n in _input_layer_names(value)]
    if isinstance(node_args, (list, tuple)):
        return [n for value in node_args for n in _input_layer_names(value)]
    return []


def _conv_bn_pairs(model: keras.Model) -> dict:
    """{conv layer name: BatchNormalization layer} for the safe folds of one functional model."""
    config = model.get_config()
    consumers = collections.Counter(_input_layer_names(config.get("output_layers", [])))
    inputs_of = {}
    for layer_config in config["layers"]:
        names = _input_layer_names(layer_config.get("inbound_nodes", []))
        inputs_of[layer_config["name"]] = names
        consumers.update(names)
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(inputs_of[layer.name]) != 1:
            continue
        if _foldable(model.get_layer(inputs_of[layer.name][0]), layer, consumers):
            pairs[inputs_of[layer.name][0]] = layer
    return pairs


def _foldable(conv, bn, consumers) -> bool:
    """A plain linear Conv2D over channels-last maps whose only reader is ``bn``.

    Anything else reading the conv's output needs the unfolded values; an activation
    between the two is not affine; a Conv2D subclass would be rebuilt as a plain one.
    """
    return (type(conv) is layers.Conv2D  # pylint: disable=unidiomatic-typecheck
            and conv.get_config()["activation"] == "linear"
            and conv.data_format == "channels_last" and bn.axis in (-1, 3)
            and consumers[conv.name] == 1)


def _clone(model: keras.Model) -> keras.Model:
    pairs = _conv_bn_pairs(model)
    folded_bns = {bn.name for bn in pairs.values()}

    def clone_layer(layer):
        if isinstance(layer, keras.Model):
            return _clone(layer)
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
            return layers.Conv2D.from_config(config)
        if layer.name in folded_bns:
            return _Folded(name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone_layer)


def _fold_weights(conv, bn):
    scale = bn.gamma.numpy() if bn.scale else np.ones(bn.moving_variance.shape, np.float32)
    scale = scale / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    offset = bn.beta.numpy() if bn.center else 0.0
    bias = conv.bias.numpy() if conv.use_bias else 0.0
    kernel = conv.kernel.numpy() * scale  # the output channel is the kernel's last axis
    return [kernel, (bias - bn.moving_mean.numpy()) * scale + offset]


def _copy_weights(source: keras.Model, clone: keras.Model):
    pairs = _conv_bn_pairs(source)
    for original, new in zip(source.layers, clone.layers):
        if isinstance(original, keras.Model):
            _copy_weights(original, new)
        elif original.name in pairs:
            new.set_weights(_fold_weights(original, pairs[original.name]))
        elif new.weights:
            new.set_weights(original.get_weights())


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """An inference copy of a functional model with Conv2D -> BatchNormalization folded.

    Args:
      model: a functional ``keras.Model`` (nested functional models are folded too),
        e.g. from `fer_tf.model.load_expression_model`.

    Returns:
      A new model with the same inputs, outputs and layer names, equal in inference
      mode up to float32 rounding; not for training (its BatchNormalizations are gone).
    """
    clone = _clone(model)
    _copy_weights(model, clone)
    return clone


def count_folds(model: keras.Model) -> int:
    """How many BatchNormalizations `fold_batch_norms` folded into ``model``'s convolutions."""
    return sum(count_folds(layer) if isinstance(layer, keras.Model) else isinstance(layer, _Folded)
               for layer in model.layers)
