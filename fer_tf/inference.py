"""Load a trained expression classifier from any of the forms training and export write.

`load_classifier(path)` accepts

- a training workdir (holds ``best_model.keras``, written by fer_tf.training);
- a ``.keras`` model file;
- an exported SavedModel directory (holds ``saved_model.pb``, written by
  fer_tf.export), or a TF-Serving base directory whose numbered version folders
  hold one (the highest version is used),

and returns a `Classifier` with one method, `predict_probabilities(images)`, that
takes uint8 RGB images [B, H, W, 3] and returns the 7 class probabilities [B, 7].
Both model forms resize and normalise inside their graphs, so callers only have to
supply face crops of the size training decoded them at (`Classifier.input_size`).
"""

import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging
# TensorFlow's own freezing (what its TFLite converter and tf2onnx use); it has no
# public tf.* name in TF 2.
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from fer_tf import compute_precision, fold_batch_norm, fuse_block_tails
from fer_tf import model as model_lib
from fer_tf import pretrained
from fer_tf.classes import CLASS_NAMES

# Side of the uint8 crops the training pipeline decodes (fer_tf.train_config.TrainConfig
# image_size default, the size of Aff-Wild2's crops). The model resizes to its own
# input size in-graph; giving it crops of this size repeats training's two resizes.
DEFAULT_INPUT_SIZE = 112

# The flagfile fer_tf.train writes into a workdir (it records --image_size).
_FLAGFILE = "flags.txt"
_SAVED_MODEL_SIGNATURE = "predict_images"


def batch_bucket(rows: int, batch_size: int) -> int:
    """The batch a chunk of ``rows`` images is padded to: the next power of two, at most
    ``batch_size``. XLA compiles the fused block tails once per batch shape (a fraction
    of a second each); buckets bound that to about log2(batch_size) + 1 shapes however
    many faces each video frame brings, for at most twice the compute on a chunk."""
    return min(1 << max(rows - 1, 0).bit_length(), batch_size)


class Classifier:
    """A loaded model: uint8 RGB images in, class probabilities out, in batches.

    Attributes:
      input_size: side (pixels) of the square face crops to feed, the size the
        training pipeline decoded images at.
      class_names: the label space of the outputs.
      path: the file or directory the model was loaded from.
      kind: "keras" or "saved_model".
      crop_margin: share of a detected box to add per side (the model's own, or None
        when the model does not say).
      flip_average: average each image's probabilities with its mirror image's
        (test-time augmentation; twice the compute).
      precision: what the network computes in, "float32" or "bfloat16"
        (`fer_tf.compute_precision`).
      pad_batches: pad each chunk with blank images up to its `batch_bucket` (the
        bfloat16 .keras path, whose XLA parts compile per batch shape).
    """

    def __init__(self, probabilities_fn: Callable, input_size: int, path: str, kind: str,
                 batch_size: int = 32, class_names=CLASS_NAMES, crop_margin: Optional[float] = None,
                 flip_average: bool = False, precision: str = "float32", pad_batches: bool = False):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._fn = probabilities_fn
        self.input_size = int(input_size)
        self.path = path
        self.kind = kind
        self.batch_size = int(batch_size)
        self.class_names = tuple(class_names)
        self.crop_margin = crop_margin
        self.flip_average = bool(flip_average)
        self.precision = precision
        self.pad_batches = bool(pad_batches)

    def predict_probabilities(self, images) -> np.ndarray:
        """Class probabilities of a batch of images.

        Args:
          images: uint8 RGB [B, H, W, 3] (numpy or tensor); any H, W (the model
            resizes), ideally `input_size` square face crops.

        Returns:
          float32 [B, num_classes]; rows sum to 1. Runs in chunks of `batch_size`.

        Raises:
          ValueError: not a uint8 [B, H, W, 3] array.
        """
        if isinstance(images, tf.Tensor):
            images = images.numpy()
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 RGB images [B, H, W, 3], got dtype {images.dtype} shape {images.shape}")
        if images.shape[0] == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        chunks = []
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start:start + self.batch_size]
            probs = self._call(chunk)
            if self.flip_average:
                probs = (probs + self._call(np.ascontiguousarray(chunk[:, :, ::-1]))) / 2
            chunks.append(probs)
        return np.concatenate(chunks)

    def _call(self, chunk: np.ndarray) -> np.ndarray:
        """The model on one chunk, zero-padded up to its batch bucket (see `batch_bucket`)."""
        rows = len(chunk)
        bucket = batch_bucket(rows, self.batch_size) if self.pad_batches else rows
        if bucket > rows:
            chunk = np.concatenate([chunk, np.zeros((bucket - rows,) + chunk.shape[1:], chunk.dtype)])
        return np.asarray(self._fn(tf.constant(chunk)), np.float32)[:rows]

    def __repr__(self):
        return (f"Classifier(kind={self.kind!r}, path={self.path!r}, "
                f"input_size={self.input_size}, precision={self.precision!r})")


def freeze(function) -> Callable:
    """A `tf.function` of one input and one output with its variables baked in as constants.

    With constant filters, oneDNN reorders each convolution's weights into its blocked
    layout once and caches them; with variables it reorders them on every call, and
    the bfloat16 casts of the weights run every call too (the README's speed row).
    Returns images -> output, the same values up to float rounding; its ``graph``
    attribute is the frozen graph (what runs).
    """
    constant = convert_variables_to_constants_v2(function.get_concrete_function())

    def call(images):
        return constant(images)[0]
    call.graph = constant.graph
    return call


def _keras_fn(path: str, precision: str):
    """(probabilities function, the model's InputContract); precision "float32" or "bfloat16"."""
    model = model_lib.load_expression_model(path)
    contract = model_lib.input_contract(model)
    if precision == "bfloat16":
        # bfloat16 only: its separate element-wise kernels are slow enough that one XLA
        # pass per SE block tail pays; in float32 the fused tails ran slower than
        # TensorFlow's own kernels (benchmarks/block_tails.py, the README's speed row).
        model = fuse_block_tails.fuse_block_tails(compute_precision.backbone_in_bfloat16(model))
    # Inference only, same outputs, faster: BatchNorm folded into the convolutions
    # (after fusing: folding leaves unserializable layers).
    model = fold_batch_norm.fold_batch_norms(model)

    # One trace for every batch and crop size: the signature is fully dynamic.
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def probabilities(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

    return freeze(probabilities), contract


def _saved_model_fn(path: str) -> Callable:
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures.get(_SAVED_MODEL_SIGNATURE)
    if signature is None:
        raise ValueError(
            f"SavedModel {path} has no {_SAVED_MODEL_SIGNATURE!r} signature (found "
            f"{sorted(loaded.signatures)}); export it with `python -m fer_tf.export`")
    outputs = signature.structured_outputs
    if "probabilities" not in outputs:
        raise ValueError(f"SavedModel {path}: signature {_SAVED_MODEL_SIGNATURE!r} has no "
                         f"'probabilities' output (outputs: {sorted(outputs)})")

    def probabilities(images):
        return signature(images=images)["probabilities"]

    # The signature's variables live in `loaded`: keep it alive as long as the function.
    probabilities.loaded = loaded
    return probabilities


def workdir_input_size(workdir: str) -> Optional[int]:
    """The --image_size a training workdir's flags.txt records, if any."""
    flagfile = os.path.join(workdir, _FLAGFILE)
    if os.path.isfile(flagfile):
        with open(flagfile) as f:
            for line in f:
                name, _, value = line.strip().partition("=")
                if name == "--image_size" and value.isdigit():
                    return int(value)
    return None


def load_classifier(path=None, batch_size: int = 32, input_size: Optional[int] = None,
                    flip_average: bool = False, precision: str = "auto") -> Classifier:
    """Loads a classifier: the shipped model, a training workdir, a .keras file or a SavedModel.

    Args:
      path: None or a shipped model's name ("fer2013", `fer_tf.pretrained`) for a
        model inside the package; a training workdir (with best_model.keras), a .keras
        file, a SavedModel directory, or a TF-Serving base directory with numbered
        versions.
      batch_size: images per model call in `predict_probabilities`.
      input_size: crop side to feed; None takes the model file's own decode size,
        else the workdir's recorded one, else `DEFAULT_INPUT_SIZE` (112).
      flip_average: average with the mirror image's probabilities.
      precision: "float32", "bfloat16" (the backbone computes in bfloat16; .keras
        models only) or "auto": bfloat16 where the CPU has it natively
        (`fer_tf.compute_precision.resolve`) for a .keras model, a SavedModel as
        exported.

    Returns:
      A `Classifier`.

    Raises:
      FileNotFoundError: nothing loadable at `path` (the message lists what was
        looked for).
      ValueError: a SavedModel without the expected signature, an unknown precision,
        or bfloat16 asked of a SavedModel.
    """
    chosen = compute_precision.resolve(precision)
    path = pretrained.resolve(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"model {path!r} not found: expected a shipped model name "
            f"({', '.join(sorted(pretrained.SHIPPED))}), a training workdir, a .keras file or "
            "an exported SavedModel directory")
    size, contract = input_size, None
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise ValueError(f"model file {path!r} is not a .keras file; pass a .keras file, a "
                             "training workdir or a SavedModel directory")
        (fn, contract), kind = _keras_fn(path, chosen), "keras"
    else:
        saved = model_lib.saved_model_dir(path)
        if saved is not None:
            if precision == "bfloat16":
                raise ValueError(f"precision bfloat16 applies to .keras models; the SavedModel "
                                 f"{saved} computes as exported (float32): drop the precision")
            fn, kind, path, chosen = _saved_model_fn(saved), "saved_model", saved, "float32"
        elif os.path.isfile(os.path.join(path, model_lib.BEST_MODEL_FILE)):
            if size is None:
                size = workdir_input_size(path)
            path = model_lib.resolve_model_file(path)
            (fn, contract), kind = _keras_fn(path, chosen), "keras"
        else:
            raise FileNotFoundError(
                f"{path!r} holds neither {model_lib.BEST_MODEL_FILE} (a training workdir) nor {model_lib.SAVED_MODEL_FILE} "
                "(an exported SavedModel, possibly in a numbered version folder); train with "
                "`python -m fer_tf.train` or export with `python -m fer_tf.export` first")
    if chosen == "bfloat16":
        logging.info("computing the backbone in bfloat16 (native on this CPU; "
                     "precision float32 for exact float32)")
    known = {}
    if contract is not None:  # a .keras model: its own contract wins over workdir files
        size = input_size or contract.decode_size or size
        known = {"class_names": contract.class_names, "crop_margin": contract.crop_margin}
    return Classifier(fn, size or DEFAULT_INPUT_SIZE, path, kind, batch_size,
                      flip_average=flip_average, precision=chosen,
                      pad_batches=kind == "keras" and chosen == "bfloat16",
                      **known)
