"""Export a trained expression model: a SavedModel for TF Serving, or an ONNX / LiteRT file.

``python -m fer_tf.export --model=PATH --export_dir=DIR/1 [--overwrite]``
``python -m fer_tf.export --model=PATH --format=onnx|litert --output=FILE [--overwrite]``

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

``--format=onnx`` (``.onnx``, for ONNX Runtime) and ``--format=litert`` (``.tflite``,
for the LiteRT interpreter) write one file through Keras' own ``model.export``; the
file has one input, ``images`` uint8 [B, D, D, 3] RGB face crops at the model's decode
size D (48 for the shipped model), and the outputs ``probabilities`` float32 [B, 7] and
``class_index`` int32 [B]. Gray conversion, the resize to the network's size, RGB->BGR,
mean subtraction and the softmax are in the file; decoding and bringing a crop to D x D
(`fer_tf.data.pipeline.resize_uint8`) are the client's (docs/exports.md). They need the
optional extra ``pip install 'fer_tf[export]'``. The file carries the model's contract
(class names, decode size) as JSON under the key `FILE_METADATA_KEY`: ONNX metadata
properties, resp. a LiteRT metadata entry. It is written to a temporary name beside the
output and renamed into place.
"""

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Optional, Sequence

import tensorflow as tf
from absl import app, flags, logging

from fer_tf import atomic, classes, cli, fold_batch_norm, inference, pretrained
from fer_tf import model as model_lib
from fer_tf.data import pipeline

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
BYTES_INPUT = "image_bytes"  # TF Serving's REST API treats "*_bytes" inputs as {"b64": ...}
IMAGES_INPUT = "images"
OUTPUT_KEYS = ("probabilities", "class_index", "class_name")

# TF Serving ignores assets.extra/ except its warm-up file; our description lives there.
METADATA_FILE = os.path.join("assets.extra", "fer_tf_export.json")

FORMATS = ("saved_model", "onnx", "litert")
# The single-file formats and the ending each needs (Keras' LiteRT export insists on it).
FILE_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}
# Where a single-file export keeps its JSON description (ONNX metadata_props key, resp.
# the name of the LiteRT model's metadata entry).
FILE_METADATA_KEY = "fer_tf_export"
FILE_OUTPUT_KEYS = ("probabilities", "class_index")

# Import name -> the pip package that provides it, per single-file format.
_FORMAT_PACKAGES = {"onnx": (("tf2onnx", "tf2onnx"), ("onnx", "onnx")), "litert": ()}


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

    The SavedModel serves inference only, so it holds the network with its BatchNorms
    folded into the convolutions (`fer_tf.fold_batch_norm`: the same outputs within
    float32 rounding, fewer passes over the activations).

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

    model = fold_batch_norm.fold_batch_norms(model)
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


def _decode_size(model, source: str, decode_size: Optional[int]) -> int:
    """The decode size to export at: the argument, else the model's, the workdir's, 112."""
    if decode_size is not None:
        return int(decode_size)
    return (model_lib.input_contract(model).decode_size
            or inference.workdir_input_size(os.path.dirname(source))
            or inference.DEFAULT_INPUT_SIZE)


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
    return export_saved_model(model, export_dir, overwrite=overwrite,
                              class_names=model_lib.input_contract(model).class_names,
                              source=os.path.abspath(source),
                              decode_size=_decode_size(model, source, decode_size))


# ---------------------------------------------------------------------------------------
# Single-file formats: ONNX and LiteRT.


class MissingPackageError(ImportError):
    """An optional package that a format needs is not installed; the message says how to
    install it."""


def require_packages(fmt: str):
    """Imports the optional packages ``fmt`` needs to be written.

    Raises:
      ValueError: an unknown format.
      MissingPackageError: a package is missing (the message names it and the pip command).
    """
    if fmt not in FILE_SUFFIXES:
        raise ValueError(f"unknown single-file format {fmt!r}; choose one of {sorted(FILE_SUFFIXES)}")
    for module, package in _FORMAT_PACKAGES[fmt]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingPackageError(
                f"--format={fmt} needs the Python package {package!r}, which is not installed "
                f"({e}); install the export extra: pip install 'fer_tf[export]' (or pip install "
                f"{package})") from e


def probabilities_model(model, decode_size: int):
    """``model`` wrapped for the single-file formats: uint8 crops in, softmax out.

    Args:
      model: a model from `fer_tf.model.build_expression_model` (float RGB -> logits).
      decode_size: side D of the square crops the file will take.

    Returns:
      A functional `keras.Model` from ``images`` uint8 [B, D, D, 3] to
      ``{"probabilities": float32 [B, C], "class_index": int32 [B]}``.
    """
    import keras

    class ClassIndex(keras.layers.Layer):
        """tf.argmax as int32. keras.ops.argmax adds a Bitcast (its -0.0 handling) that
        neither ONNX nor LiteRT builtins have."""

        def call(self, probabilities):
            return tf.argmax(probabilities, axis=-1, output_type=tf.int32)

        def compute_output_shape(self, input_shape):
            return tuple(input_shape[:-1])

    images = keras.Input((decode_size, decode_size, 3), dtype="uint8", name=IMAGES_INPUT)
    logits = model(keras.ops.cast(images, "float32"), training=False)
    probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(
        keras.ops.cast(logits, "float32"))
    index = ClassIndex(dtype="float32", name="class_index")(probabilities)
    return keras.Model(images, {"probabilities": probabilities, "class_index": index},
                       name=f"{model.name}_probabilities")


def _file_metadata(model, class_names, source, decode_size, fmt):
    import keras

    contract = model_lib.input_contract(model)
    return {
        "format": fmt,
        "class_names": list(class_names),
        "decode_size": decode_size,
        "model_input_size": model_input_size(model),
        "grayscale": contract.grayscale,
        "crop_margin": contract.crop_margin,
        "inputs": {IMAGES_INPUT: f"uint8 [batch, {decode_size}, {decode_size}, 3]: RGB 0..255 "
                   f"face crops brought to {decode_size}x{decode_size} as "
                   "fer_tf.data.pipeline.resize_uint8 does (antialiased bilinear when "
                   "shrinking, plain bilinear when enlarging, rounded to uint8)"},
        "outputs": {
            "probabilities": "float32 [batch, num_classes]: softmax of the logits",
            "class_index": "int32 [batch]: argmax of probabilities",
        },
        "preprocessing": ("in the file: " + ("RGB->gray (three equal channels), " if
                                             contract.grayscale else "")
                          + "bilinear resize to model_input_size, RGB->BGR, minus VGGFace2 mean"),
        "source_model": source,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }


def _add_onnx_metadata(path: str, text: str):
    """Stores ``text`` in the ONNX file's metadata_props (ONNX Runtime:
    ``session.get_modelmeta().custom_metadata_map``)."""
    import onnx

    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = FILE_METADATA_KEY, text
    onnx.save(proto, path)


def _add_litert_metadata(path: str, text: str):
    """Stores ``text`` as a metadata entry of the LiteRT flatbuffer (a named buffer, the
    schema's own place for it; runtimes ignore unknown entries)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    buffer = schema.BufferT()
    buffer.data = list(text.encode("utf-8"))
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = FILE_METADATA_KEY, len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    flatbuffer_utils.write_model(model, path)


def read_file_metadata(path) -> Dict:
    """The JSON description a single-file export carries (empty if it has none)."""
    path = os.fspath(path)
    if path.endswith(FILE_SUFFIXES["onnx"]):
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        return json.loads(props[FILE_METADATA_KEY]) if FILE_METADATA_KEY in props else {}
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    for entry in model.metadata or []:
        if entry.name.decode() == FILE_METADATA_KEY:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode("utf-8"))
    return {}


def check_file_output(output, fmt: str, overwrite: bool = False, inputs=()) -> str:
    """Checks, before any work, that a ``fmt`` file may be written at ``output``.

    Raises:
      ValueError: a wrong file ending, or ``output`` is an input.
      FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    suffix = FILE_SUFFIXES[fmt]
    if not os.fspath(output).endswith(suffix):
        raise ValueError(f"--output={output} must end with {suffix} for --format={fmt}")
    return atomic.check_output(output, inputs, overwrite, flag="--output")


def export_model_file(
    model,
    output,
    fmt: str,
    overwrite: bool = False,
    class_names: Sequence[str] = classes.CLASS_NAMES,
    source: Optional[str] = None,
    decode_size: int = inference.DEFAULT_INPUT_SIZE,
) -> str:
    """Writes ``model`` as one ONNX or LiteRT file, atomically (see the module docstring).

    Args:
      model: a model from `fer_tf.model.build_expression_model`.
      output: the file to write (``.onnx`` / ``.tflite``).
      fmt: "onnx" or "litert".
      overwrite: replace an existing ``output``.
      class_names: class names in logit order (recorded in the file's metadata).
      source: where the model came from (recorded; never overwritten).
      decode_size: side of the square uint8 crops the file takes.

    Returns:
      The absolute path of the file.

    Raises:
      MissingPackageError: the format's optional packages are missing.
      ValueError, FileExistsError: as `check_file_output`.
    """
    require_packages(fmt)
    output = check_file_output(output, fmt, overwrite, [source])
    wrapped = probabilities_model(model, decode_size)
    signature = [tf.TensorSpec([None, decode_size, decode_size, 3], tf.uint8, name=IMAGES_INPUT)]
    metadata = json.dumps(_file_metadata(model, class_names, source, decode_size, fmt))
    with atomic.output_path(output, FILE_SUFFIXES[fmt]) as tmp:
        if fmt == "onnx":
            wrapped.export(tmp, format="onnx", input_signature=signature, verbose=False)
            _add_onnx_metadata(tmp, metadata)
        else:
            # Builtin ops only: Keras would also allow TF ("Flex") ops, which the LiteRT
            # runtime cannot run without the TF delegate; here conversion fails instead.
            wrapped.export(tmp, format="litert", input_signature=signature, verbose=False,
                           target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
            _add_litert_metadata(tmp, metadata)
    logging.info("exported %s to %s (%s)", source or model.name, output, fmt)
    return output


def export_file(model_path, output, fmt: str, overwrite: bool = False,
                decode_size: Optional[int] = None) -> str:
    """Loads a training workdir, `.keras` file or shipped model and writes it as one ONNX
    or LiteRT file (see `export_model_file`; `decode_size` as in `export`)."""
    require_packages(fmt)  # before the (slow) load
    logging.info("fer_tf.export: model %s, format %s", pretrained.describe(model_path), fmt)
    source = os.path.abspath(resolve_model_path(pretrained.resolve(model_path)))
    check_file_output(output, fmt, overwrite, [source])
    model = load_model(source)
    return export_model_file(model, output, fmt, overwrite=overwrite,
                             class_names=model_lib.input_contract(model).class_names,
                             source=source, decode_size=_decode_size(model, source, decode_size))


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
    """The command's flags: --model, --format, --export_dir / --output, --overwrite, --decode_size."""
    flags.DEFINE_string("model", None, pretrained.model_flag_help(
        "training workdir (uses its best_model.keras) or a .keras file"))
    flags.DEFINE_enum("format", "saved_model", FORMATS, "saved_model: a TF Serving folder "
                      "(--export_dir); onnx / litert: one .onnx / .tflite file (--output), "
                      "needs pip install 'fer_tf[export]'.")
    flags.DEFINE_string("export_dir", None, "--format=saved_model: destination, a numbered "
                        "version folder: <model_base_path>/1.")
    flags.DEFINE_string("output", None, "--format=onnx|litert: the file to write "
                        "(.onnx / .tflite).")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty export_dir or an existing output.")
    flags.DEFINE_integer("decode_size", None, "Side the training run decoded images at (its "
                         "--image_size); default: the model file's own, else the workdir's "
                         "flags.txt, else 112.")

    def destination_given(values):
        needed = "export_dir" if values["format"] == "saved_model" else "output"
        unused = "output" if needed == "export_dir" else "export_dir"
        if values[needed] is None:
            raise flags.ValidationError(f"--format={values['format']} needs --{needed}")
        if values[unused] is not None:
            raise flags.ValidationError(f"--{unused} does not apply to --format="
                                        f"{values['format']}; pass --{needed}")
        return True

    flags.register_multi_flags_validator(["format", "export_dir", "output"], destination_given)


def main(argv):
    """Exports the model the flags name and prints the export folder or file."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if f.format == "saved_model":
        print(export(f.model, f.export_dir, overwrite=f.overwrite, decode_size=f.decode_size))
        return
    try:
        print(export_file(f.model, f.output, f.format, overwrite=f.overwrite,
                          decode_size=f.decode_size))
    except MissingPackageError as e:  # a user error: one line with the pip command
        raise app.UsageError(str(e)) from e


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.export")
