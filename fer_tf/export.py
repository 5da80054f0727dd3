"""Export a trained expression model as a SavedModel for TF Serving.

``python -m fer_tf.export --model=PATH --export_dir=DIR/1 [--overwrite]``

PATH is a training workdir (its ``best_model.keras`` is used) or a ``.keras`` file.
The SavedModel has two signatures, both returning ``probabilities`` float32 [B, 7],
``class_index`` int32 [B] and ``class_name`` string [B] (`fer_tf.classes.CLASS_NAMES`):

- ``serving_default``: ``image_bytes`` string [B], JPEG/PNG/BMP/GIF bytes of any size,
  gray or colour.
- ``predict_images``: ``images`` uint8 [B, H, W, 3] RGB, any H and W.

Both first bring every image to the training run's decode size exactly as training and
`fer_tf.evaluate` do (`fer_tf.data.pipeline.resize_uint8`: antialiased when shrinking,
rounded to uint8), so a served image gets the probabilities evaluation gives it.

Decoding, resizing, RGB->BGR and VGGFace2 mean subtraction all happen inside the
graph, so no client can preprocess differently from training. Loading the export
needs TensorFlow only (no Keras, no fer_tf): ``tf.saved_model.load(DIR/1)``.

TF Serving loads numbered version folders under ``--model_base_path``; the export is
written to a hidden temporary folder beside ``export_dir`` and renamed into place, so
a server watching the base path never sees a half-written version.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Optional, Sequence

import tensorflow as tf
from absl import app, flags, logging

from fer_tf import atomic, classes, cli, inference, pretrained
from fer_tf import model as model_lib
from fer_tf.data import pipeline

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
BYTES_INPUT = "image_bytes"  # TF Serving's REST API treats "*_bytes" inputs as {"b64": ...}
IMAGES_INPUT = "images"
OUTPUT_KEYS = ("probabilities", "class_index", "class_name")

# TF Serving ignores assets.extra/ except its warm-up file; our description lives there.
METADATA_FILE = os.path.join("assets.extra", "fer_tf_export.json")


def resolve_model_path(path) -> str:
    """Finds the `.keras` file that PATH (a training workdir or a `.keras` file) refers to.

    Raises:
      FileNotFoundError: nothing usable at ``path``.
      ValueError: ``path`` is already an exported SavedModel, or not a `.keras` file.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, model_lib.SAVED_MODEL_FILE)):
        raise ValueError(
            f"{path!r} is already an exported SavedModel; pass the training workdir or its "
            f"{model_lib.BEST_MODEL_FILE} to --model")
    return model_lib.resolve_model_file(path)


def load_model(path):
    """Loads the Keras model at PATH (a training workdir or a `.keras` file)."""
    return model_lib.load_expression_model(resolve_model_path(path))


def model_input_size(model) -> int:
    """The square size the model's "preprocessing" layer resizes to (the backbone's)."""
    try:
        return int(model.get_layer("preprocessing").size)
    except ValueError as e:
        raise ValueError(
            f"model {model.name!r} has no 'preprocessing' layer; export expects a model from "
            "fer_tf.model.build_expression_model"
        ) from e


def serving_functions(model, class_names: Sequence[str] = classes.CLASS_NAMES,
                      decode_size: int = inference.DEFAULT_INPUT_SIZE) -> Dict:
    """The two serving functions, keyed by signature name.

    Args:
      model: a model from `fer_tf.model.build_expression_model` (RGB 0..255 -> logits).
      class_names: names for the output classes, in logit order.

    Returns:
      ``{name: (fn, input_signature)}`` for ``serving_default`` and ``predict_images``;
      each ``fn`` returns a dict with `OUTPUT_KEYS`.
    """
    num_classes = int(model.output_shape[-1])
    if num_classes != len(class_names):
        raise ValueError(
            f"model has {num_classes} outputs but {len(class_names)} class names were given"
        )
    names = tf.constant(list(class_names))
    decoded = tf.TensorSpec((decode_size, decode_size, 3), tf.uint8)

    def outputs(images):
        # An empty request gets empty outputs: the convolutions reject a batch of zero.
        logits = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: tf.cast(model(images, training=False), tf.float32),
            lambda: tf.zeros([0, num_classes], tf.float32),
        )
        probabilities = tf.nn.softmax(logits, axis=-1)
        index = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "class_index": index,
            "class_name": tf.gather(names, index),
        }

    def serve_bytes(image_bytes):
        # Images differ in size, so each is decoded and resized alone, by the pipeline's
        # own decoder (gray -> RGB, PNG alpha dropped; bad bytes fail this request only).
        images = tf.map_fn(lambda b: pipeline.decode_image(b, decode_size), image_bytes,
                           fn_output_signature=decoded)
        return outputs(tf.cast(images, tf.float32))

    def serve_images(images):
        images = tf.map_fn(lambda image: pipeline.resize_uint8(image, decode_size), images,
                           fn_output_signature=decoded)
        return outputs(tf.cast(images, tf.float32))

    return {
        SERVING_SIGNATURE: (
            serve_bytes,
            [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)],
        ),
        IMAGES_SIGNATURE: (
            serve_images,
            [tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)],
        ),
    }


def _metadata(model, class_names, source, decode_size):
    import keras

    return {
        "class_names": list(class_names),
        "model_input_size": model_input_size(model),
        "decode_size": decode_size,
        "signatures": {
            SERVING_SIGNATURE: {
                "inputs": {
                    BYTES_INPUT: "string [batch]: JPEG/PNG/BMP/GIF bytes, any size, gray or colour"
                },
            },
            IMAGES_SIGNATURE: {
                "inputs": {IMAGES_INPUT: "uint8 [batch, height, width, 3]: RGB 0..255, any size"},
            },
        },
        "outputs": {
            "probabilities": "float32 [batch, num_classes]: softmax of the logits",
            "class_index": "int32 [batch]: argmax of probabilities",
            "class_name": "string [batch]: class_names[class_index]",
        },
        "preprocessing": "decode to RGB, resize to decode_size as training did (antialiased "
        "when shrinking, rounded to uint8), bilinear resize to model_input_size, RGB->BGR, "
        "minus VGGFace2 mean (all in-graph)",
        "source_model": source,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }


def _check_destination(export_dir: str, overwrite: bool, source: Optional[str] = None):
    """The export folder is replaced as a whole: it may not hold (or be) the model."""
    if source and atomic.is_within(source, export_dir):
        raise ValueError(f"export_dir {export_dir!r} holds the model being exported "
                         f"({source}); export to a folder outside it, e.g. DIR/1")
    if os.path.lexists(export_dir):
        if not os.path.isdir(export_dir):
            raise FileExistsError(f"export_dir {export_dir!r} exists and is not a directory")
        if os.listdir(export_dir) and not overwrite:
            raise FileExistsError(
                f"export_dir {export_dir!r} exists and is not empty; choose a new version "
                "folder (e.g. DIR/2) or pass --overwrite to replace it"
            )
    if not os.path.basename(export_dir).isdigit():
        logging.warning(
            "TF Serving only loads numbered version folders; export to %s/1 to serve %s "
            "with --model_base_path=%s", export_dir, export_dir, export_dir,
        )


def export_saved_model(
    model,
    export_dir,
    overwrite: bool = False,
    class_names: Sequence[str] = classes.CLASS_NAMES,
    source: Optional[str] = None,
    decode_size: int = inference.DEFAULT_INPUT_SIZE,
) -> str:
    """Writes the serving SavedModel of ``model`` to ``export_dir`` atomically.

    Args:
      model: a model from `fer_tf.model.build_expression_model`.
      export_dir: destination, conventionally ``<model_base_path>/<version>``.
      overwrite: replace a non-empty ``export_dir``.
      class_names: class names in logit order.
      source: where the model came from (recorded in the metadata JSON).
      decode_size: the side training decoded its images at (`--image_size`).

    Returns:
      The absolute export directory.

    Raises:
      FileExistsError: ``export_dir`` is non-empty and ``overwrite`` is False.
    """
    import keras

    export_dir = os.path.abspath(os.fspath(export_dir))
    _check_destination(export_dir, overwrite, source)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in serving_functions(model, class_names, decode_size).items():
        archive.add_endpoint(name, fn, input_signature=signature)

    # Hidden name: TF Serving ignores folders whose name is not a number.
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.tmp", dir=parent)
    old = None
    try:
        # mkdtemp makes the folder 0700; a server running as another user (the
        # tensorflow/serving container) must be able to read it, so use the umask as mkdir would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        archive.write_out(tmp, verbose=False)
        meta_path = os.path.join(tmp, METADATA_FILE)
        os.makedirs(os.path.dirname(meta_path), exist_ok=True)
        with open(meta_path, "w") as f:
            json.dump(_metadata(model, class_names, source, decode_size), f, indent=2)
            f.write("\n")
        if os.path.isdir(export_dir) and os.listdir(export_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.old", dir=parent)
            os.rename(export_dir, os.path.join(old, "replaced"))
        elif os.path.isdir(export_dir):
            os.rmdir(export_dir)
        os.rename(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(export_dir):
            os.rename(os.path.join(old, "replaced"), export_dir)  # put the old export back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    logging.info("exported %s to %s", source or model.name, export_dir)
    return export_dir


def export(model_path, export_dir, overwrite: bool = False,
           decode_size: Optional[int] = None) -> str:
    """Loads a training workdir or `.keras` file and exports it (see `export_saved_model`).

    ``model_path`` None or a shipped name ("fer2013") exports the model inside the
    package. `decode_size` None takes the model file's own, else the training run's
    `--image_size` from the workdir's flags.txt, else
    `fer_tf.inference.DEFAULT_INPUT_SIZE` (training's default, 112).
    """
    logging.info("fer_tf.export: model %s", pretrained.describe(model_path))
    source = resolve_model_path(pretrained.resolve(model_path))
    # Check the destination before the (slow) load so a mistake fails at once.
    _check_destination(os.path.abspath(os.fspath(export_dir)), overwrite, source)
    model = load_model(source)
    contract = model_lib.input_contract(model)
    if decode_size is None:
        decode_size = (contract.decode_size
                       or inference.workdir_input_size(os.path.dirname(source))
                       or inference.DEFAULT_INPUT_SIZE)
    return export_saved_model(model, export_dir, overwrite=overwrite,
                              class_names=contract.class_names,
                              source=os.path.abspath(source), decode_size=decode_size)


@dataclasses.dataclass
class ExportedModel:
    """A loaded export. Calling a signature returns a dict of tensors (`OUTPUT_KEYS`).

    Attributes:
      module: the object from ``tf.saved_model.load`` (keeps the variables alive).
      serving_default: ``fn(image_bytes=<string [B]>)``.
      predict_images: ``fn(images=<uint8 [B, H, W, 3]>)``.
      metadata: the export's JSON description (empty if absent).
    """

    module: object
    serving_default: Callable
    predict_images: Callable
    metadata: Dict


def load_exported(export_dir) -> ExportedModel:
    """Loads an export with TensorFlow only and returns its signatures.

    Args:
      export_dir: the folder written by `export_saved_model` (e.g. ``DIR/1``).

    Raises:
      FileNotFoundError: no SavedModel at ``export_dir``.
      ValueError: the SavedModel lacks the fer_tf signatures.
    """
    export_dir = os.fspath(export_dir)
    if not os.path.isfile(os.path.join(export_dir, model_lib.SAVED_MODEL_FILE)):
        raise FileNotFoundError(
            f"no SavedModel at {export_dir!r} (expected {model_lib.SAVED_MODEL_FILE} written by "
            "`python -m fer_tf.export`)"
        )
    module = tf.saved_model.load(export_dir)
    missing = {SERVING_SIGNATURE, IMAGES_SIGNATURE} - set(module.signatures.keys())
    if missing:
        raise ValueError(
            f"SavedModel {export_dir!r} lacks signatures {sorted(missing)}; re-export it with "
            "`python -m fer_tf.export`"
        )
    metadata = {}
    meta_path = os.path.join(export_dir, METADATA_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            metadata = json.load(f)
    return ExportedModel(
        module=module,
        serving_default=module.signatures[SERVING_SIGNATURE],
        predict_images=module.signatures[IMAGES_SIGNATURE],
        metadata=metadata,
    )


# ---------------------------------------------------------------------------------------
# Entry point. Flags are defined only when run as a program: evaluate, predict and the
# benchmarks import this module for `load_exported` and define their own --model.


def define_flags():
    """The command's flags: --model, --export_dir, --overwrite, --decode_size."""
    flags.DEFINE_string("model", None, "Shipped model name (default: fer2013, inside the "
                        "package), training workdir (uses its best_model.keras) or a .keras file.")
    flags.DEFINE_string("export_dir", None, "Destination, a numbered version folder: "
                        "<model_base_path>/1.")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty export_dir.")
    flags.DEFINE_integer("decode_size", None, "Side the training run decoded images at (its "
                         "--image_size); default: the model file's own, else the workdir's "
                         "flags.txt, else 112.")
    flags.mark_flags_as_required(["export_dir"])


def main(argv):
    """Exports the model the flags name and prints the export folder."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    print(export(f.model, f.export_dir, overwrite=f.overwrite, decode_size=f.decode_size))


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.export")
