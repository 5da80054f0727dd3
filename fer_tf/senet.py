"""The VGGFace2 SE-ResNet-50 ("SENet-50") as a Keras functional model.

Layer names are the PyTorch module paths of the VGGFace2-pytorch ``.pkl`` release
with ``.`` replaced by ``_`` (``layer3_2_conv4``), so weight conversion maps names
by rule. Every numerical choice below matches the PyTorch/Caffe original; the
docs/senet50.md ("Porting hazards") gives what each mistake costs.
"""

import json
import math
import os

import keras
from keras import layers

from fer_tf.batch_norm import TorchBatchNorm

# PyTorch BatchNorm2d defaults: eps 1e-5 (Keras' 1e-3 costs 6e-3 relative error in
# the logits), momentum 0.1, which is Keras momentum 0.9.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

SENET50_BLOCKS = (3, 4, 6, 3)
VGGFACE2_CLASSES = 8631


def _bn(name):
    # TorchBatchNorm: PyTorch's running_var (unbiased) and TF's fused kernel in training.
    return TorchBatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _conv(filters, kernel, name, stride=1, use_bias=False, padding="valid"):
    return layers.Conv2D(
        filters, kernel, strides=stride, padding=padding, use_bias=use_bias, name=name
    )


def _bottleneck(x, width, stride, prefix, project):
    """One SE bottleneck block (`layerL.i` in PyTorch)."""
    out_channels = width * 4
    # Caffe-style: the stride sits on the first 1x1 conv, not on the 3x3 (torchvision).
    u = _conv(width, 1, f"{prefix}_conv1", stride=stride)(x)
    u = _bn(f"{prefix}_bn1")(u)
    u = layers.ReLU(name=f"{prefix}_relu1")(u)
    # 3x3, stride 1: "same" pads 1 on every side here, as PyTorch's padding=1.
    u = _conv(width, 3, f"{prefix}_conv2", padding="same")(u)
    u = _bn(f"{prefix}_bn2")(u)
    u = layers.ReLU(name=f"{prefix}_relu2")(u)
    u = _conv(out_channels, 1, f"{prefix}_conv3")(u)
    u = _bn(f"{prefix}_bn3")(u)
    # Squeeze-excitation: the two 1x1 convs carry biases in this release.
    gate = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_squeeze")(u)
    gate = _conv(out_channels // 16, 1, f"{prefix}_conv4", use_bias=True)(gate)
    gate = layers.ReLU(name=f"{prefix}_relu4")(gate)
    gate = _conv(out_channels, 1, f"{prefix}_conv5", use_bias=True)(gate)
    gate = layers.Activation("sigmoid", name=f"{prefix}_sigmoid")(gate)
    u = layers.Multiply(name=f"{prefix}_excite")([u, gate])
    if project:
        shortcut = _conv(out_channels, 1, f"{prefix}_downsample_0", stride=stride)(x)
        shortcut = _bn(f"{prefix}_downsample_1")(shortcut)
    else:
        shortcut = x
    x = layers.Add(name=f"{prefix}_add")([u, shortcut])
    return layers.ReLU(name=f"{prefix}_relu")(x)


def _ceil_mode_pad(size, kernel=3, stride=2):
    """Bottom/right padding that makes a valid pool equal PyTorch's ceil_mode=True."""
    out = math.ceil((size - kernel) / stride) + 1
    return max((out - 1) * stride + kernel - size, 0)


STEMS = ("vggface2", "3x3", "3x3_pool")


def _max_pool_ceil(x):
    # MaxPool2d(3, 2, ceil_mode=True): pad bottom/right, then a valid pool. Zero
    # padding is exact because the input is post-ReLU (>= 0) and every window keeps
    # at least one real pixel. A floor-mode pool gives 55x55 instead of 56x56.
    ph, pw = (_ceil_mode_pad(int(d)) for d in x.shape[1:3])
    x = layers.ZeroPadding2D(((0, ph), (0, pw)), name="maxpool_pad")(x)
    return layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)


def _stem(inputs, base_width, stem):
    """conv1 -> bn1 -> relu (-> maxpool): the layers before the first stage."""
    if stem == "vggface2":
        # PyTorch pads 3 on every side; Conv2D(padding="same") with stride 2 pads 2 before
        # and 3 after (6e-2 relative error), so pad explicitly and use a valid conv.
        x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
        x = _conv(base_width, 7, "conv1", stride=2)(x)
    else:
        # Stride 1 and "same" (1 pixel each side): no detail of a 48-pixel face is lost.
        x = _conv(base_width, 3, "conv1", padding="same")(inputs)
    x = _bn("bn1")(x)
    x = layers.ReLU(name="relu")(x)
    if stem == "3x3":
        return x
    return _max_pool_ceil(x)


def se_resnet(
    blocks=SENET50_BLOCKS,
    base_width=64,
    include_top=True,
    classes=VGGFACE2_CLASSES,
    weights=None,
    input_shape=(224, 224, 3),
    name="senet",
    stem="vggface2",
):
    """Builds an SE-ResNet with the VGGFace2 SENet-50 layout.

    Args:
      blocks: bottleneck blocks per stage; (3, 4, 6, 3) is SENet-50, smaller
        tuples give test/demo variants.
      base_width: width of the first stage (64 for SENet-50); stage widths double.
      include_top: whether to end with the ``fc`` classifier (logits, no softmax);
        without it the output is the pooled feature (4 * 8 * base_width values
        for four stages, 2048 for SENet-50).
      classes: outputs of ``fc`` (8631 VGGFace2 identities; 8 for the FER+ release).
      weights: None (random initialisation) or a ``.weights.h5`` file written by
        ``python -m weights_conversion``. Loading into ``include_top=False`` drops fc.
      input_shape: static (H, W, 3). The input is float32, BGR, minus the VGGFace2 mean.
      name: model name.
      stem: "vggface2" (the release's 7x7 stride-2 conv + 3x3 stride-2 max-pool: a
        quarter of the input side reaches the first stage) or one of `STEMS`' compact
        stems for small faces: "3x3" (a 3x3 stride-1 conv, no pool: the full side
        reaches the first stage, as CIFAR-style ResNets do for 32-48 pixel inputs) and
        "3x3_pool" (the same conv, then the max-pool: half the side). Only
        "vggface2" can load the converted VGGFace2 weights.

    Returns:
      A ``keras.Model``.
    """
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
    if len(input_shape) != 3 or input_shape[0] is None or input_shape[1] is None:
        raise ValueError(f"input_shape must be a static (H, W, 3), got {input_shape}")
    if weights is not None:
        if stem != "vggface2":
            raise ValueError(f"converted VGGFace2 weights fit the 'vggface2' stem only, not {stem!r}")
        return _load_converted(weights, blocks, base_width, include_top, classes, input_shape, name)

    inputs = keras.Input(shape=input_shape, name="image")
    x = _stem(inputs, base_width, stem)
    for stage, n in enumerate(blocks):
        width = base_width * 2**stage
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            x = _bottleneck(x, width, stride, f"layer{stage + 1}_{i}", project=(i == 0))
    # The release's 7x7 average pool is global at 224x224; global keeps other sizes valid.
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    if include_top:
        x = layers.Dense(classes, name="fc")(x)
    return keras.Model(inputs, x, name=name)


def se_resnet50(include_top=True, classes=VGGFACE2_CLASSES, weights=None, input_shape=(224, 224, 3)):
    """The VGGFace2 SE-ResNet-50; see `se_resnet` for the arguments."""
    return se_resnet(
        SENET50_BLOCKS, 64, include_top, classes, weights, input_shape, name="senet50"
    )


def metadata_path(weights_path):
    """The JSON written beside a converted weights file (``X.weights.h5`` -> ``X.json``)."""
    weights_path = os.fspath(weights_path)
    base = weights_path[: -len(".weights.h5")] if weights_path.endswith(".weights.h5") else weights_path
    return base + ".json"


def missing_weights_error(path, flag: str = "") -> FileNotFoundError:
    """The one "converted weights not found" error: where the file comes from, how to make it.

    Args:
      path: the missing ``.weights.h5`` file.
      flag: the flag that named it, if a command's (adds the from-scratch alternative).
    """
    shown = f"{flag}={path}" if flag else f"SENet weights file {os.fspath(path)!r}"
    advice = ", or pass --random_init to train from scratch" if flag else ""
    return FileNotFoundError(
        f"{shown} not found. Convert the VGGFace2 PyTorch release (senet50_ft_weight.pkl "
        "from VGGFace2-pytorch, or senet50_ft_dag.pth) with `python -m weights_conversion "
        f"--src senet50_ft_weight.pkl --dst senet50_ft.weights.h5`{advice}")


def _load_converted(path, blocks, base_width, include_top, classes, input_shape, name):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise missing_weights_error(path)
    file_classes = classes
    meta = metadata_path(path)
    if os.path.isfile(meta):
        with open(meta) as f:
            file_classes = json.load(f).get("classes", classes)
    full = se_resnet(blocks, base_width, True, file_classes, None, input_shape, name)
    try:
        full.load_weights(path)
    except Exception as e:  # Keras raises several types for mismatched files.
        raise ValueError(
            f"{path!r} does not fit an SE-ResNet with blocks={tuple(blocks)}, "
            f"base_width={base_width}, {file_classes} classes: {e}"
        ) from e
    if include_top:
        if file_classes != classes:
            raise ValueError(
                f"{path!r} has a {file_classes}-way fc but classes={classes} was asked; "
                f"pass classes={file_classes} or include_top=False"
            )
        return full
    return keras.Model(full.input, full.get_layer("avgpool").output, name=name)
