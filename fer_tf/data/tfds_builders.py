"""tensorflow-datasets builders for Aff-Wild2 expression and ExpW, built offline.

Both datasets are licence-gated, so the builders never download: the user points
``manual_dir`` at the unpacked folders and ``python -m fer_tf.data.prepare`` writes
TFRecord shards under ``data_dir``. Examples are ``{"image": JPEG (decoded to uint8
RGB), "label": int64 ABAW index, "video": str, "frame": int64}``; the Aff-Wild2 crop
bytes are stored as they are (no re-encoding), ExpW crops are cut from the photos and
JPEG-encoded once. The readers in ``affwild2``/``expw`` enumerate the examples, so the
records hold exactly what the readers return, in the readers' order.

Given a Beam runner or Beam options in its ``DownloadConfig``, TFDS builds through an
Apache Beam pipeline (optional ``beam`` extra): the same per-example functions then run
on the Beam workers, and the records come out identical.
"""

import collections
import dataclasses
import os
from typing import Optional

import cv2
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from fer_tf import classes
from fer_tf.data import affwild2, expw

_AFFWILD2_INSTRUCTIONS = """\
Aff-Wild2 is licence-gated: request access at https://ibug.doc.ic.ac.uk/resources/aff-wild2/
and unpack the expression annotations and the cropped-aligned faces into one folder:

  <manual_dir>/annotations/EXPR_Set/Training_Set|Train_Set|Validation_Set/<video>.txt
  <manual_dir>/cropped_aligned/<video>/00001.jpg ...

(2022-2024 editions: <manual_dir>/EXPR_Classification_Challenge/ or
EXPR_Recognition_Challenge/ with Train_Set and Validation_Set, next to cropped_aligned/.)
Then run: python -m fer_tf.data.prepare --dataset=affwild2 --manual_dir=<manual_dir> --data_dir=<out>
"""

_EXPW_INSTRUCTIONS = """\
ExpW is licence-gated: request it from the authors (Zhang et al., "From Facial Expression
Recognition to Interpersonal Relation Prediction") and unpack it so that:

  <manual_dir>/label/label.lst
  <manual_dir>/image/origin/<image_name>.jpg      (unpack image/origin.7z*)

Then run: python -m fer_tf.data.prepare --dataset=expw --manual_dir=<manual_dir> --data_dir=<out>
"""


def _features(class_names):
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "video": tfds.features.Text(),
        "frame": tf.int64,
    })


@dataclasses.dataclass(eq=False)
class Affwild2Config(tfds.core.BuilderConfig):
    """keep_other: keep the 2022+ ``Other`` class as label 7 (8 classes)."""

    keep_other: bool = False


# Both builders pass disable_shuffling=True: records in the order _generate_examples
# gives (TFDS would otherwise shuffle by a hash of the key), so training over the records
# sees the file-list readers' order. TFDS then sorts by key, so keys are the position.
_IN_READER_ORDER = ("Records in the readers' order (disable_shuffling), keyed by position; "
                    "can be built through Apache Beam.")


class _BeamWhenAsked(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds through Beam when the DownloadConfig names a Beam runner or options.

    TFDS itself builds a split through Beam when ``_generate_examples`` returns a
    ``beam.PTransform`` rather than a generator, so the builder must know which to
    return; it learns it from the same DownloadConfig that TFDS hands to beam.Pipeline.
    """

    _beam = False

    def download_and_prepare(self, *, download_config=None, **kwargs):  # pylint: disable=arguments-differ
        self._beam = bool(download_config and (download_config.beam_runner is not None
                                               or download_config.beam_options is not None))
        return super().download_and_prepare(download_config=download_config, **kwargs)

    def _examples(self, items, to_examples, **kwargs):
        """``to_examples(item, **kwargs)`` -> (key, example) pairs, for every item: a Beam
        transform under Beam (the workers call to_examples), else a generator."""
        if self._beam:
            beam = tfds.core.lazy_imports.apache_beam
            return beam.Create(items) | beam.FlatMap(to_examples, **kwargs)
        return (pair for item in items for pair in to_examples(item, **kwargs))


def _affwild2_example(item):
    """(position, (crop path, label, video, frame)) -> [(position, example)]."""
    position, (path, label, video, frame) = item
    with open(path, "rb") as f:
        data = f.read()
    return [(position, {"image": data, "label": label, "video": video, "frame": frame})]


class Affwild2Expression(_BeamWhenAsked):
    """Aff-Wild2 expression frames (label >= 0 and a crop), train and validation."""

    name = "affwild2_expression"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Frames with a label and a cropped-aligned face.",
                     "1.1.0": _IN_READER_ORDER}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _AFFWILD2_INSTRUCTIONS
    BUILDER_CONFIGS = [
        Affwild2Config(name="expr7", description="7 ABAW classes; Other dropped."),
        Affwild2Config(name="expr8", description="8 classes, Other kept as 7.", keep_other=True),
    ]

    def _info(self):
        names = classes.CLASS_NAMES + ((classes.OTHER_CLASS_NAME,) if self.builder_config.keep_other else ())
        return self.dataset_info_from_configs(
            description="Aff-Wild2 expression track (ABAW), cropped-aligned 112x112 faces.",
            features=_features(names),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://ibug.doc.ic.ac.uk/resources/aff-wild2/",
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        return {
            "train": self._generate_examples(root, "train"),
            "validation": self._generate_examples(root, "validation"),
        }

    def _generate_examples(self, root, split):
        images, _ = affwild2.read_affwild2_with_report(
            root, split, keep_other=self.builder_config.keep_other)
        rows = zip(images.paths, images.labels.tolist(), images.videos, images.frames.tolist())
        return self._examples(list(enumerate(rows)), _affwild2_example)


@dataclasses.dataclass(eq=False)
class ExpwConfig(tfds.core.BuilderConfig):
    """margin: box enlargement per side (fraction); min_confidence: box filter."""

    margin: float = 0.0
    min_confidence: Optional[float] = None


def expw_config(margin: float = 0.0, min_confidence: Optional[float] = None):
    """The predefined ExpW config for these options, or a custom one named after them."""
    for config in Expw.BUILDER_CONFIGS:
        if config.margin == margin and config.min_confidence == min_confidence:
            return config.name
    name = f"margin_{margin:g}" + (f"_conf_{min_confidence:g}" if min_confidence is not None else "")
    return ExpwConfig(name=name, margin=margin, min_confidence=min_confidence,
                      version=Expw.VERSION)


def _expw_examples(item, margin, count):
    """(photo path, [(position, face)]) -> [(position, example)] of its non-empty crops.

    The photo is decoded once for all its faces; ``count(name)`` tallies the dropped
    faces ("missing_photo": absent or undecodable, "empty_box": outside the photo).
    """
    path, faces = item
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) \
        if os.path.isfile(path) else None  # cv2.imread would print a warning per missing photo
    if image is None:
        for _ in faces:
            count("missing_photo")
        return []
    pairs = []
    for position, face in faces:
        crop = expw.crop_face(image, face, margin)
        if crop.size == 0:
            count("empty_box")
            continue
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, expw.JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the crop of {face} from {path}")
        pairs.append((position, {"image": encoded.tobytes(),
                                 "label": classes.EXPW_TO_ABAW[face.label],
                                 "video": "", "frame": -1}))
    return pairs


def _logged_at_end(pairs, counts):
    """The pairs, then one line of what was dropped (once the generator is exhausted)."""
    yield from pairs
    logging.info("expw: dropped %d faces of missing photos, %d empty boxes",
                 counts["missing_photo"], counts["empty_box"])


class Expw(_BeamWhenAsked):
    """ExpW faces cropped from label.lst boxes; one 'train' split (ExpW has no others)."""

    name = "expw"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Crops of deduplicated label.lst boxes, labels in ABAW order.",
                     "1.1.0": _IN_READER_ORDER}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _EXPW_INSTRUCTIONS
    BUILDER_CONFIGS = [
        ExpwConfig(name="margin_0", description="Raw boxes img[top:bottom, left:right]."),
        ExpwConfig(name="margin_0.2", description="Boxes enlarged by 20% per side.", margin=0.2),
    ]

    def _info(self):
        return self.dataset_info_from_configs(
            description="Expression in-the-Wild (ExpW) face crops, labels remapped to ABAW order.",
            features=_features(classes.CLASS_NAMES),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://mmlab.ie.cuhk.edu.hk/projects/socialrelation/index.html",
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(os.fspath(dl_manager.manual_dir))}

    def _generate_examples(self, root):
        config = self.builder_config
        faces, lines, duplicates = expw.parse_label_file(expw.find_label_file(root))
        image_dir = expw.find_image_dir(root)
        if config.min_confidence is not None:
            faces = [f for f in faces if f.confidence >= config.min_confidence]
        # One item per photo; positions in label.lst order, which is the reader's order.
        by_photo = collections.OrderedDict()
        for position, face in enumerate(faces):
            by_photo.setdefault(os.path.join(image_dir, face.image), []).append((position, face))
        logging.info("expw: %d faces in %d photos from %d lines (%d duplicates dropped)",
                     len(faces), len(by_photo), lines, duplicates)
        items = list(by_photo.items())
        if self._beam:  # the drops show as Beam counters (namespace tfds) on the runner
            return self._examples(items, _expw_examples, margin=config.margin,
                                  count=tfds.beam.inc_counter)
        counts = collections.Counter()
        pairs = self._examples(items, _expw_examples, margin=config.margin,
                               count=lambda name: counts.update((name,)))
        return _logged_at_end(pairs, counts)


BUILDERS = {"affwild2": Affwild2Expression, "expw": Expw}


def make_builder(dataset: str, data_dir, keep_other: bool = False, margin: float = 0.0,
                 min_confidence: Optional[float] = None) -> tfds.core.DatasetBuilder:
    """The builder for ``dataset`` ("affwild2" or "expw") writing under ``data_dir``."""
    if dataset == "affwild2":
        if margin or min_confidence is not None:
            raise ValueError("margin and min_confidence apply to expw only")
        return Affwild2Expression(data_dir=os.fspath(data_dir),
                                  config="expr8" if keep_other else "expr7")
    if dataset == "expw":
        if keep_other:
            raise ValueError("keep_other applies to affwild2 only")
        return Expw(data_dir=os.fspath(data_dir), config=expw_config(margin, min_confidence))
    raise ValueError(f"no TFDS builder for {dataset!r}; expected one of {sorted(BUILDERS)}")


def import_beam():
    """``apache_beam``, or None when the optional ``beam`` extra is not installed."""
    try:
        import apache_beam  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return apache_beam


def beam_download_config(beam_runner: Optional[str] = None, beam_options=()) -> dict:
    """The DownloadConfig arguments that make TFDS build through Beam.

    Args:
      beam_runner: a Beam runner name ("DirectRunner", "DataflowRunner", ...), or None.
      beam_options: Beam pipeline arguments, e.g. ["--runner=FlinkRunner", ...].

    Returns:
      {} for a plain build (neither given, or apache-beam not installed: then one line
      is logged), else {"beam_runner": ..., "beam_options": PipelineOptions}.
    """
    beam_options = list(beam_options)
    if beam_runner is None and not beam_options:
        return {}
    beam = import_beam()
    if beam is None:
        logging.warning("apache-beam is not installed (pip install 'fer_tf[beam]'): "
                        "building in this process without Beam")
        return {}
    logging.info("Building through Apache Beam %s (runner %s, options %s)",
                 beam.__version__, beam_runner or "from the options", beam_options)
    return {"beam_runner": beam_runner,
            "beam_options": beam.options.pipeline_options.PipelineOptions(beam_options)}


def build(dataset: str, manual_dir, data_dir, beam_runner: Optional[str] = None,
          beam_options=(), **options) -> tfds.core.DatasetBuilder:
    """Builds the TFRecord shards offline from the user's unpacked folders.

    Args:
      dataset: "affwild2" or "expw".
      manual_dir: the unpacked dataset (see MANUAL_DOWNLOAD_INSTRUCTIONS).
      data_dir: where TFDS writes ``<name>/<config>/<version>/``.
      beam_runner, beam_options: build through Apache Beam (see
        :func:`beam_download_config`); by default, in this process.
      **options: keep_other (affwild2); margin, min_confidence (expw).

    Returns:
      The prepared builder.

    Raises:
      FileNotFoundError: manual_dir missing or not in the expected layout.
    """
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir {os.fspath(manual_dir)!r} does not exist.\n"
                                + BUILDERS[dataset].MANUAL_DOWNLOAD_INSTRUCTIONS)
    builder = make_builder(dataset, data_dir, **options)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=False,
        **beam_download_config(beam_runner, beam_options)))
    return builder


def load(dataset: str, data_dir, split: str, encoded_images: bool = False,
         **options) -> tf.data.Dataset:
    """Reads built records, in the readers' order: a dataset of {"image": uint8 [H,W,3],
    "label": int64, "video": string, "frame": int64}.

    Args:
      dataset: "affwild2", "expw", or "affwild2+expw" (the parts concatenated in order;
        options go to the part they apply to).
      data_dir: the TFDS data_dir given to prepare.
      split: "train" or "validation" (ExpW has "train" only).
      encoded_images: "image" as the stored JPEG bytes (string), for a pipeline that
        decodes them itself (pipeline.make_dataset_from_records).
      **options: keep_other (affwild2); margin, min_confidence (expw): select the
        built config.

    Raises:
      FileNotFoundError: the dataset was not prepared in ``data_dir`` (says how to).
    """
    parts = [n.strip() for n in dataset.split("+")]
    result = None
    for name in parts:
        keys = ("keep_other",) if name == "affwild2" else ("margin", "min_confidence")
        builder = make_builder(name, data_dir, **{k: v for k, v in options.items() if k in keys})
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"{builder.name}/{builder.builder_config.name} is not built in "
                f"{os.fspath(data_dir)!r}; run: python -m fer_tf.data.prepare --dataset={name} "
                f"--manual_dir=<unpacked {name}> --data_dir={os.fspath(data_dir)}")
        decoders = {"image": tfds.decode.SkipDecoding()} if encoded_images else None
        part = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
        result = part if result is None else result.concatenate(part)
    return result
