"""BatchNormalization with PyTorch ``BatchNorm2d``'s training semantics, on TF's fused kernel.

Keras 3's ``BatchNormalization`` differs from PyTorch's in training mode in two ways
that matter here:

- its moving variance averages the *biased* batch variance; PyTorch's ``running_var``
  averages the *unbiased* one (times n / (n - 1), n = images x height x width), so a
  fine-tuned model's inference statistics drift from the paper's;
- on the TensorFlow backend it normalises with unfused ops (moments, then
  batch_normalization); TensorFlow's fused kernel (``FusedBatchNormV3`` and its
  gradient) does the same mathematics in fewer passes over the activations; on CPU it
  took ``benchmarks/train_step.py`` (SE-ResNet-50) from 0.94x to 1.10-1.17x PyTorch.

`TorchBatchNorm` keeps Keras' variables, names and inference path (so converted weights,
saved models and SavedModel exports are unchanged) and replaces the training path.
"""

import keras
from keras import layers, ops

# TensorFlow's Python wrapper raises epsilon to this because cuDNN rejects smaller ones.
# On CPU the raw kernel takes PyTorch's exact 1e-5; only GPUs get the wrapper's floor
# (the change in the output is below 1e-8 / (variance + eps), relative).
_CUDNN_MIN_EPSILON = 1.001e-5
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package="fer_tf")
class TorchBatchNorm(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training mode is PyTorch's ``BatchNorm2d``.

    Training mode normalises with the batch's biased variance (as both frameworks do)
    and updates ``moving_variance`` with the unbiased one (PyTorch's ``running_var``).
    Inference mode is Keras' own. Construct it like ``BatchNormalization`` (PyTorch's
    defaults are ``epsilon=1e-5, momentum=0.9``); masks, renorm and ``synchronized`` are
    not supported.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.renorm or self.synchronized:
            raise ValueError("TorchBatchNorm supports neither renorm nor synchronized=True")

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            raise ValueError(f"{self.name}: TorchBatchNorm does not take a mask")
        if self._can_fuse(inputs):
            outputs, mean, unbiased_variance = self._fused_training(inputs)
        else:
            outputs, mean, unbiased_variance = self._unfused_training(inputs)
        self.moving_mean.assign(
            self.moving_mean * self.momentum + ops.cast(mean, self.moving_mean.dtype) * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum
            + ops.cast(unbiased_variance, self.moving_variance.dtype) * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def _can_fuse(self, inputs):
        return (keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                and self.axis % 4 == 3
                and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES
                and self.variable_dtype == "float32" and self.scale and self.center)

    def _fused_training(self, inputs):
        import tensorflow as tf

        epsilon = self.epsilon
        if tf.config.list_logical_devices("GPU"):
            epsilon = max(epsilon, _CUDNN_MIN_EPSILON)
        # The kernel's batch_variance output is already Bessel-corrected (n / (n - 1)),
        # while it normalises with the biased variance: exactly PyTorch's split.
        outputs, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=ops.convert_to_tensor(self.gamma), offset=ops.convert_to_tensor(self.beta),
            mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32),
            epsilon=epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        return outputs, mean, unbiased_variance

    def _unfused_training(self, inputs):
        # Other dtypes (float64 in the equivalence tests) and backends: Keras' moments,
        # computed in at least float32, plus the correction for the moving average.
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, compute_dtype)
        rank = len(inputs.shape)
        mean, variance = ops.moments(inputs, axes=[a for a in range(rank) if a != self.axis % rank])
        count = ops.cast(ops.size(inputs), compute_dtype) / ops.cast(ops.size(mean), compute_dtype)
        unbiased_variance = variance * count / ops.maximum(count - 1.0, 1.0)
        outputs = ops.batch_normalization(
            inputs, mean, variance, axis=self.axis,
            offset=ops.cast(self.beta, compute_dtype), scale=ops.cast(self.gamma, compute_dtype),
            epsilon=self.epsilon)
        return outputs, mean, unbiased_variance
