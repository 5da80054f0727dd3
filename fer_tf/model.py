"""The expression model: in-graph preprocessing + SE-ResNet backbone + a new 7-way head.

Input: RGB images in [0, 255] (float32; any size). The model resizes to the
backbone's size, optionally augments (training only), converts to BGR minus the
VGGFace2 mean, and returns logits. Training, evaluation and export all go through
this one graph, so no caller can preprocess differently.
"""

import dataclasses
import math
import os
from typing import Optional

import keras
import tensorflow as tf
from keras import layers

from fer_tf import classes, senet
from fer_tf import augment as augment_lib
from fer_tf import preprocessing


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Shape of an SE-ResNet backbone and the input size it runs at."""

    blocks: tuple
    base_width: int
    input_size: int
    stem: str = "vggface2"


# "senet50" is the paper's network; the others are for CPU demos and tests.
BACKBONES = {
    "senet50": BackboneSpec(senet.SENET50_BLOCKS, 64, preprocessing.NETWORK_INPUT_SIZE),
    "small": BackboneSpec((1, 1, 1, 1), 32, 112),
    "tiny": BackboneSpec((1, 1, 1, 1), 16, 64),
    # For 48x48 faces (FER2013's native size): a 3x3 stride-1 stem + max-pool, so the
    # first stage sees 24x24 instead of the 12x12 the VGGFace2 stem would leave.
    "fer48_w16": BackboneSpec((1, 1, 1, 1), 16, 48, "3x3_pool"),
    "fer48_w24": BackboneSpec((1, 1, 1, 1), 24, 48, "3x3_pool"),
    "fer48_w32": BackboneSpec((1, 1, 1, 1), 32, 48, "3x3_pool"),
    # Twice the depth at three quarters of the width: about the same cost as fer48_w32.
    "fer48_w24x2": BackboneSpec((2, 2, 2, 2), 24, 48, "3x3_pool"),
    "fer48_w16x2": BackboneSpec((2, 2, 2, 2), 16, 48, "3x3_pool"),
    # The same depth at width 32 (3.9 M parameters, about 1.4 times the cost per image of
    # fer48_w24x2).
    "fer48_w32x2": BackboneSpec((2, 2, 2, 2), 32, 48, "3x3_pool"),
    # SENet-50's own block layout at a quarter of its width (1.66 M parameters, about
    # 1.3 times the cost per image of fer48_w24x2).
    "fer48_d50_w16": BackboneSpec(senet.SENET50_BLOCKS, 16, 48, "3x3_pool"),
    "fer48_s4_w16": BackboneSpec((1, 1, 1, 1), 16, 48),
    "fer48_s4_w32x2": BackboneSpec((2, 2, 2, 2), 32, 48),
}


@keras.saving.register_keras_serializable(package="fer_tf")
class FacePreprocessing(layers.Layer):
    """(gray) -> Resize -> (training: augmentation) -> (centre crop) -> BGR minus the mean.

    The order follows the paper's torchvision pipeline (Resize, RandomHorizontalFlip,
    ColorJitter, then normalisation). Runs in float32 whatever the global policy.

    The layer also carries the model's input contract, so a `.keras` file copied
    anywhere is used as in its training run: ``decode_size`` (the side the input
    pipeline resized faces to before the model saw them; crops for prediction are
    brought to it the same way), ``grayscale`` (the model was trained on gray faces:
    colour input is turned gray first, torchvision's weights, three equal channels),
    ``class_names`` (the meaning of the outputs) and ``crop_margin`` (how much of a
    detector's box to add per side so a crop is framed like the training faces).

    ``center_crop`` (optional) is the side of the central square the backbone sees, out of
    the ``size`` image: the network runs on fewer pixels (cheaper per image), and with a
    shift jitter in the augmentation the training crops land at random positions, the
    usual random crop of FER2013 recipes.
    """

    def __init__(self, size=224, augment=False, seed=None, augment_options=None,
                 decode_size=None, grayscale=False, class_names=None, crop_margin=None,
                 center_crop=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.size = size
        self.augment = augment
        self.seed = seed
        self.augment_options = dict(augment_options or {})
        self.decode_size = int(decode_size) if decode_size else None
        self.grayscale = bool(grayscale)
        self.class_names = tuple(class_names) if class_names else tuple(classes.CLASS_NAMES)
        self.crop_margin = None if crop_margin is None else float(crop_margin)
        self.center_crop = int(center_crop) if center_crop else None
        if self.center_crop is not None and not 0 < self.center_crop <= size:
            raise ValueError(f"center_crop={center_crop} must be in 1..{size} (the input size)")
        self.augmentation = None
        if augment:
            self.augmentation = augment_lib.FaceAugmentation(
                seed=seed, name="augmentation", **self.augment_options)

    def build(self, input_shape):
        # The augmentation's random state must exist before the model is saved or traced.
        if self.augmentation is not None and not self.augmentation.built:
            self.augmentation.build((input_shape[0], self.size, self.size, 3))
        self.built = True

    def call(self, images, training=False):
        x = tf.cast(images, tf.float32)
        if self.grayscale:
            x = tf.tile(augment_lib.rgb_to_grayscale(x), [1, 1, 1, 3])
        x = preprocessing.resize(x, self.size)
        if self.augmentation is not None and training:
            x = self.augmentation(x, training=True)
        if self.center_crop is not None:
            x = preprocessing.center_crop(x, self.center_crop)
        return preprocessing.rgb_to_network_input(x)

    @property
    def output_size(self) -> int:
        """Side of the images the backbone receives."""
        return self.center_crop or self.size

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, 3)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "augment": self.augment,
                "seed": self.seed, "augment_options": self.augment_options,
                "decode_size": self.decode_size, "grayscale": self.grayscale,
                "class_names": list(self.class_names), "crop_margin": self.crop_margin,
                "center_crop": self.center_crop}


def _torch_linear_initializers(fan_in):
    """PyTorch nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both tensors."""
    bound = 1.0 / math.sqrt(fan_in)
    kernel = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
    return kernel, keras.initializers.RandomUniform(-bound, bound)


def backbone_spec(name: str) -> BackboneSpec:
    """The `BACKBONES` entry of ``name``; a ValueError listing the choices if unknown."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def zero_last_batchnorm_scales(backbone: keras.Model):
    """Sets the scale (gamma) of every residual branch's last BatchNorm (``*_bn3``) to 0.

    Each bottleneck then starts as the identity on its shortcut, so a deep network trained
    from scratch begins as a shallow one (Goyal et al. 2017; torchvision's
    ``zero_init_residual``, timm's ``zero_init_last``). The scales' gradients are not
    zero, so the branches, and after them their squeeze-excitation gates, learn from the
    first update.
    """
    for layer in backbone.layers:
        if layer.name.endswith("_bn3"):
            layer.gamma.assign(keras.ops.zeros_like(layer.gamma))


def build_backbone(backbone="senet50", backbone_weights=None, input_size=None):
    """The SE-ResNet feature extractor (no fc) as a nested model named "backbone", for
    square inputs of ``input_size`` (default: the backbone's own size)."""
    spec = backbone_spec(backbone)
    if backbone_weights is not None and not os.path.isfile(backbone_weights):
        raise senet.missing_weights_error(backbone_weights)  # before building anything
    return senet.se_resnet(
        spec.blocks,
        spec.base_width,
        include_top=False,
        weights=backbone_weights,
        input_shape=(input_size or spec.input_size, input_size or spec.input_size, 3),
        name="backbone",
        stem=spec.stem,
    )


def build_expression_model(
    backbone="senet50",
    backbone_weights=None,
    num_classes=classes.NUM_CLASSES,
    augment=False,
    seed=None,
    augment_options=None,
    decode_size=None,
    grayscale=False,
    class_names=None,
    crop_margin=None,
    center_crop=None,
    zero_init_last=False,
):
    """Builds the paper's model.

    Args:
      backbone: "senet50" (the paper's), or "small"/"tiny" for CPU demos and tests.
      backbone_weights: a converted VGGFace2 `.weights.h5` file, or None for random init.
      num_classes: size of the new head (7 ABAW expressions).
      augment: random flip + ColorJitter inside the model when called with training=True.
      seed: augmentation seed.
      augment_options: extra `FaceAugmentation` arguments (shift, scale, rotation,
        erasing, ...); None is the paper's flip + ColorJitter.
      decode_size, grayscale, class_names, crop_margin: the input contract stored in
        the model (see `FacePreprocessing`).
      center_crop: side of the central square of the backbone's input size that the
        backbone sees (None: all of it); see `FacePreprocessing`.
      zero_init_last: with random initialisation, start every residual branch at zero
        (`zero_last_batchnorm_scales`); refused with ``backbone_weights``, which it would
        overwrite.

    Returns:
      A `keras.Model` from RGB [0, 255] images (None, None, None, 3) to logits. The
      head is the Dense layer named "head"; the backbone is the nested model "backbone".
    """
    face = FacePreprocessing(backbone_spec(backbone).input_size, augment=augment, seed=seed,
                             augment_options=augment_options, decode_size=decode_size,
                             grayscale=grayscale,
                             class_names=class_names or classes.CLASS_NAMES[:num_classes],
                             crop_margin=crop_margin, center_crop=center_crop,
                             name="preprocessing")
    if zero_init_last and backbone_weights is not None:
        raise ValueError("zero_init_last would overwrite the converted backbone weights; "
                         "it is for random initialisation only")
    trunk = build_backbone(backbone, backbone_weights, face.output_size)
    if zero_init_last:
        zero_last_batchnorm_scales(trunk)
    images = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = face(images)
    features = trunk(x)
    kernel_init, bias_init = _torch_linear_initializers(features.shape[-1])
    # The head stays float32 under mixed precision: logits feed a float32 loss.
    logits = layers.Dense(
        num_classes,
        kernel_initializer=kernel_init,
        bias_initializer=bias_init,
        dtype="float32",
        name="head",
    )(features)
    return keras.Model(images, logits, name=f"fer_{backbone}")


# The model training keeps (best validation ABAW score); evaluate, predict and export
# accept the training workdir in its place.
BEST_MODEL_FILE = "best_model.keras"


# What marks an exported SavedModel folder (`fer_tf.export`, TF Serving).
SAVED_MODEL_FILE = "saved_model.pb"


def saved_model_dir(path) -> Optional[str]:
    """The SavedModel folder at ``path``: itself, or its highest numbered version
    (a TF Serving base folder); None if there is none."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    versions = [d for d in os.listdir(path)
                if d.isdigit() and os.path.isfile(os.path.join(path, d, SAVED_MODEL_FILE))]
    return os.path.join(path, max(versions, key=int)) if versions else None


def resolve_model_file(path) -> str:
    """The `.keras` file PATH names: the file itself, or a training workdir's best model.

    Raises:
      FileNotFoundError: nothing at `path`, or a workdir without a best model yet.
      ValueError: a file that is not `.keras`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        best = os.path.join(path, BEST_MODEL_FILE)
        if not os.path.isfile(best):
            raise FileNotFoundError(
                f"no {BEST_MODEL_FILE} in training workdir {path!r} (training writes it at the "
                "first validation); pass the workdir after a validation, or a .keras file")
        return best
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise ValueError(f"model file {path!r} is not a .keras file; pass a training "
                             f"workdir or the {BEST_MODEL_FILE} that training wrote")
        return path
    raise FileNotFoundError(
        f"model {path!r} not found: expected a training workdir containing {BEST_MODEL_FILE} "
        "or a .keras file written by `python -m fer_tf.train`")


@dataclasses.dataclass(frozen=True)
class InputContract:
    """What a caller must know to feed a model: see `FacePreprocessing`.

    ``decode_size`` and ``crop_margin`` are None for files written before the model
    carried them.
    """

    decode_size: Optional[int]
    grayscale: bool
    class_names: tuple
    crop_margin: Optional[float]


def input_contract(model: keras.Model) -> InputContract:
    """The input contract stored in a model's preprocessing layer."""
    try:
        layer = model.get_layer("preprocessing")
    except ValueError as e:
        raise ValueError(f"model {model.name!r} has no 'preprocessing' layer: not a fer_tf "
                         "expression model") from e
    return InputContract(layer.decode_size, layer.grayscale, layer.class_names, layer.crop_margin)


def load_expression_model(path):
    """Loads a `.keras` model written by training (custom layers registered here)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} not found (expected a .keras file from training)")
    return keras.saving.load_model(path, compile=False)
