"""Evaluate a trained model on a dataset split the way the ABAW challenge scores it.

    python -m fer_tf.evaluate --model=WORKDIR|MODEL.keras|SAVED_MODEL_DIR \\
        --dataset=affwild2 --data_dir=/data/affwild2 --split=validation \\
        [--smooth_window=K] [--output_dir=DIR] [--batch_size=64]

Prints and writes (``evaluation.json``) the ABAW score, macro F1 and accuracy (the
paper's Table 1) and per-class F1 (Table 2), and draws ``confusion_matrix.png`` and
``per_class_f1.png``. For video datasets (Aff-Wild2, demo) it also writes every
frame's probabilities per video (``per_video/<video>.csv``) and reports the scores
after temporal smoothing next to the raw ones: per video, frames without a scored
prediction (no face crop, unannotated) are filled from their neighbours, then class
probabilities are averaged over a centred window of K frames
(`fer_tf.temporal.smooth_per_video`). K=1 only fills, so it equals the raw scores.
Which K to use is the user's call: choose it on validation data and report it; a K
tuned on a split and scored on the same split is optimistic.

Images are decoded by the training input pipeline (`fer_tf.data.pipeline`), at the
crop size the model was trained on, so evaluation sees exactly what validation
during training saw. Files that cannot be decoded are skipped, counted and logged.
"""

import csv
import io
import json
import os
import time
from typing import Dict, Optional

import numpy as np
from absl import app, flags, logging

from fer_tf import atomic, cli, compute_precision, inference, metrics, plots, pretrained, temporal
from fer_tf.data import examples, pipeline, records, sources

REPORT_FILE = "evaluation.json"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_SMOOTHED_PNG = "confusion_matrix_smoothed.png"
F1_PNG = "per_class_f1.png"
PER_VIDEO_DIR = "per_video"

CONVENTION = ("macro F1 = unweighted mean of the per-class F1 over all classes; a class absent "
              "from labels and predictions has F1 0 (sklearn zero_division=0); score = "
              f"{metrics.F1_WEIGHT} * F1 + {metrics.ACCURACY_WEIGHT} * accuracy over all frames "
              "pooled across videos")


def predict_source(classifier, source: examples.LabelledImages, batch_size: int = 64):
    """Probabilities of every decodable image of a source, in source order.

    Args:
      classifier: a `fer_tf.inference.Classifier`.
      source: labelled images from `fer_tf.data.sources.load_source`.
      batch_size: images per decoded batch.

    Returns:
      (kept, probs): the LabelledImages actually scored (undecodable files removed,
      logged and counted) and float32 [len(kept), C] probabilities.
    """
    if isinstance(source, records.RecordSplit):
        # Records were checked when built; one the decoder drops fails the order check.
        kept = source
        dataset = records.make_dataset(source, batch_size, classifier.input_size, shuffle=False)
    else:
        ok, _ = pipeline.check_image_files(source.paths)
        kept = examples.subset(source, ok)
        if len(kept) == 0:
            raise ValueError(f"no decodable image among the {len(source)} listed")
        # skip_corrupt=False: files were checked above, and a silently dropped element
        # would misalign predictions with paths; a decode failure here is an error.
        dataset = pipeline.make_dataset(kept, batch_size, image_size=classifier.input_size,
                                        shuffle=False, skip_corrupt=False)
    probs, labels, start, done = [], [], time.time(), 0
    for images, batch_labels, _ in dataset:
        probs.append(classifier.predict_probabilities(images.numpy()))
        labels.append(batch_labels.numpy())
        done += len(probs[-1])
        if len(probs) % 50 == 0:
            logging.info("evaluated %d / %d images (%.0f images/s)", done, len(kept),
                         done / (time.time() - start))
    probs = np.concatenate(probs)
    if not np.array_equal(np.concatenate(labels), kept.labels):
        raise RuntimeError("internal error: decoded batches are out of order with the file list")
    return kept, probs


def _scores(labels, probs, class_names) -> Dict:
    preds = np.argmax(probs, axis=1)
    cm = metrics.confusion_matrix(labels, preds, len(class_names))
    scores = metrics.scores_from_confusion(cm)
    return {
        "abaw_score": scores["abaw_score"],
        "f1": scores["f1"],
        "accuracy": scores["accuracy"],
        "per_class_f1": dict(zip(class_names, scores["per_class_f1"])),
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def is_video_source(source: examples.LabelledImages) -> bool:
    """True when examples carry video names and frame indices (Aff-Wild2 layout)."""
    return any(source.videos) and bool(np.any(source.frames >= 0))


def smooth_source(source: examples.LabelledImages, probs: np.ndarray, window: int) -> np.ndarray:
    """Per-video fill + moving average of probabilities; still images are left as they are."""
    out = np.asarray(probs, np.float64).copy()
    video_rows = np.flatnonzero((np.asarray(source.videos) != "") & (source.frames >= 0))
    if video_rows.size:
        out[video_rows] = temporal.smooth_per_video(
            out[video_rows], np.asarray(source.videos)[video_rows], source.frames[video_rows], window)
    return out


def evaluate_source(classifier, source: examples.LabelledImages, smooth_window: int = 1,
                    batch_size: int = 64) -> Dict:
    """Scores a classifier on labelled images: raw and (for videos) smoothed.

    Args:
      classifier: a `fer_tf.inference.Classifier`.
      source: labelled images (frames of videos or still images).
      smooth_window: odd window in frames for the smoothed report (videos only).
      batch_size: images per batch.

    Returns:
      dict with "num_images", "num_skipped", "class_names", "raw" (abaw_score, f1,
      accuracy, per_class_f1 {name: F1}, confusion_matrix), for video sources
      "smoothed" (same keys) and "smooth_window", and the arrays "probabilities",
      "smoothed_probabilities" (or None) and "scored" (the kept LabelledImages) for
      writing per-video files (dropped from the JSON).
    """
    temporal.check_window(smooth_window, "smooth_window")
    kept, probs = predict_source(classifier, source, batch_size)
    names = tuple(source.class_names)
    if len(names) != probs.shape[1]:
        raise ValueError(f"the model outputs {probs.shape[1]} classes but the dataset has "
                         f"{len(names)} ({list(names)}); use a dataset option that matches "
                         "(e.g. keep_other=False for 8-class Aff-Wild2 editions)")
    result = {
        "num_images": len(kept),
        "num_skipped": len(source) - len(kept),
        "class_names": list(names),
        "raw": _scores(kept.labels, probs, names),
        "probabilities": probs,
        "smoothed_probabilities": None,
        "scored": kept,
    }
    if is_video_source(kept):
        smoothed = smooth_source(kept, probs, int(smooth_window))
        result["smooth_window"] = int(smooth_window)
        result["smoothed"] = _scores(kept.labels, smoothed, names)
        result["smoothed_probabilities"] = smoothed
    elif int(smooth_window) > 1:
        logging.warning("smooth_window=%d ignored: the examples are still images, not video frames",
                        int(smooth_window))
    return result


def format_tables(result: Dict) -> str:
    """The paper's Table 1 (F1, accuracy, score) and Table 2 (per-class F1) as text."""
    rows = [("raw", result["raw"])]
    if "smoothed" in result:
        rows.append((f"smoothed K={result['smooth_window']}", result["smoothed"]))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"Table 1 ({result['num_images']} images)",
             f"{'':<{width}}{'F1':>8}{'Accuracy':>10}{'Score':>8}"]
    for name, s in rows:
        lines.append(f"{name:<{width}}{s['f1']:>8.4f}{s['accuracy']:>10.4f}{s['abaw_score']:>8.4f}")
    names = result["class_names"]
    col = max(8, max(len(n) for n in names) + 1)
    lines += ["", "Table 2 (per-class F1)", f"{'':<{width}}" + "".join(f"{n:>{col}}" for n in names)]
    for name, s in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{s['per_class_f1'][n]:>{col}.4f}" for n in names))
    return "\n".join(lines)


def _per_video_csv(rows, names, probs, smoothed, labels, frames) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["frame", "label", "prediction"] + [f"p_{n}" for n in names]
    if smoothed is not None:
        header += ["smoothed_prediction"] + [f"smoothed_p_{n}" for n in names]
    writer.writerow(header)
    for i in rows[np.argsort(frames[rows], kind="stable")]:
        line = [int(frames[i]), int(labels[i]), int(np.argmax(probs[i]))] + [f"{v:.6f}" for v in probs[i]]
        if smoothed is not None:
            line += [int(np.argmax(smoothed[i]))] + [f"{v:.6f}" for v in smoothed[i]]
        writer.writerow(line)
    return out.getvalue().encode()


# What `write_report` may write into its folder.
REPORT_FILES = (REPORT_FILE, CONFUSION_PNG, CONFUSION_SMOOTHED_PNG, F1_PNG, PER_VIDEO_DIR)


def write_report(result: Dict, output_dir: str, extra: Optional[Dict] = None) -> Dict:
    """Writes evaluation.json, the PNGs and (videos) per-video CSVs, each atomically.

    Args:
      result: from `evaluate_source`.
      output_dir: created if needed.
      extra: more JSON fields (model path, dataset, split, ...).

    Returns:
      The JSON payload written.
    """
    os.makedirs(output_dir, exist_ok=True)
    payload = {k: v for k, v in result.items()
               if k not in ("probabilities", "smoothed_probabilities", "scored")}
    payload["convention"] = CONVENTION
    payload.update(extra or {})
    names = result["class_names"]
    atomic.write_bytes(os.path.join(output_dir, CONFUSION_PNG),
                  plots.confusion_png(result["raw"]["confusion_matrix"], names, "raw"))
    if "smoothed" in result:
        atomic.write_bytes(os.path.join(output_dir, CONFUSION_SMOOTHED_PNG),
                      plots.confusion_png(result["smoothed"]["confusion_matrix"], names,
                                    f"smoothed K={result['smooth_window']}"))
    atomic.write_bytes(os.path.join(output_dir, F1_PNG), plots.f1_bar_png(result))
    scored = result["scored"]
    if is_video_source(scored):
        videos = np.asarray(scored.videos)
        for video in np.unique(videos[videos != ""]):
            rows = np.flatnonzero(videos == video)
            atomic.write_bytes(os.path.join(output_dir, PER_VIDEO_DIR, f"{video}.csv"),
                          _per_video_csv(rows, names, result["probabilities"],
                                         result["smoothed_probabilities"], scored.labels, scored.frames))
        payload["per_video_dir"] = PER_VIDEO_DIR
    atomic.write_bytes(os.path.join(output_dir, REPORT_FILE),
                  (json.dumps(payload, indent=2) + "\n").encode())
    return payload


def evaluate(model: Optional[str], dataset: str, data_dir: str, split: str = "validation",
             smooth_window: int = 1, output_dir: Optional[str] = None, batch_size: int = 64,
             input_size: Optional[int] = None, flip_average: bool = False,
             overwrite: bool = False, precision: str = "auto", **source_options) -> Dict:
    """Loads a model and a split, scores it, prints the tables and writes the report.

    Args:
      model: None or a shipped model's name (the model inside the package), a training
        workdir, .keras file or exported SavedModel directory.
      dataset, data_dir, split, **source_options: see `fer_tf.data.sources.load_source`.
      smooth_window: odd smoothing window in frames for video datasets.
      output_dir: where to write the report; None writes nothing.
      batch_size: images per batch.
      input_size: decode size override (default: the model file's own, else the
        training run's, else 112).
      flip_average: average each image's probabilities with its mirror image's.
      overwrite: replace report files already in ``output_dir``.
      precision: "auto", "float32" or "bfloat16" (`fer_tf.inference.load_classifier`).

    Returns:
      The result of `evaluate_source` plus the run's description.

    Raises:
      ValueError, FileExistsError, PermissionError: ``output_dir`` may not be written
        (checked before any work; see `fer_tf.atomic.check_output_dir`).
    """
    logging.info("fer_tf.evaluate: model %s", pretrained.describe(model))
    if output_dir:
        atomic.check_output_dir(
            output_dir, REPORT_FILES, [pretrained.resolve(model)] + str(data_dir).split(","),
            overwrite)
    classifier = inference.load_classifier(model, batch_size=batch_size, input_size=input_size,
                                           flip_average=flip_average, precision=precision)
    if records.is_records(dataset):
        source = records.load_split(dataset, data_dir, split, **source_options)
    else:
        source = sources.load_source(dataset, data_dir, split, **source_options)
    logging.info("evaluating %s on %s/%s: %s", classifier, dataset, split, source.summary())
    result = evaluate_source(classifier, source, smooth_window, batch_size)
    print(format_tables(result))
    extra = {"model": classifier.path, "dataset": dataset, "data_dir": os.fspath(data_dir),
             "split": split, "input_size": classifier.input_size, "flip_average": flip_average,
             "precision": classifier.precision}
    result.update(extra)
    if output_dir:
        write_report(result, output_dir)
        logging.info("wrote %s", os.path.join(output_dir, REPORT_FILE))
    return result


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model", None, pretrained.model_flag_help(
        "training workdir, .keras file or exported SavedModel dir"))
    flags.DEFINE_string("dataset", None, f"Dataset name: one of {sources.DATASETS}, or "
                        "tfds:affwild2 / tfds:expw for records built by fer_tf.data.prepare.")
    flags.DEFINE_string("data_dir", None, "Dataset root folder (tfds: datasets: the TFDS data dir).")
    flags.DEFINE_string("split", "validation", "Split to evaluate.")
    flags.DEFINE_integer("smooth_window", 1, "Odd temporal smoothing window in frames (videos); "
                         "1 = no smoothing. Choose it on validation data.")
    flags.DEFINE_string("output_dir", None, "Where to write evaluation.json, PNGs, per-video CSVs.")
    flags.DEFINE_integer("batch_size", 64, "Images per batch.")
    flags.DEFINE_integer("input_size", None, "Decode size of the images (default: the training "
                         "run's image_size, else 112).")
    flags.DEFINE_bool("keep_other", False, "Aff-Wild2 2022+ editions: keep the 8th class 'Other'.")
    flags.DEFINE_bool("flip_average", False, "Average each image's probabilities with its "
                      "mirror image's (test-time augmentation, twice the compute).")
    flags.DEFINE_bool("overwrite", False, "Replace report files already in --output_dir.")
    flags.DEFINE_enum("precision", "auto", compute_precision.PRECISIONS,
                      compute_precision.FLAG_HELP)
    flags.mark_flags_as_required(["dataset", "data_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = {"keep_other": True} if FLAGS.keep_other else {}
    evaluate(FLAGS.model, FLAGS.dataset, FLAGS.data_dir, FLAGS.split, FLAGS.smooth_window,
             FLAGS.output_dir, FLAGS.batch_size, FLAGS.input_size, FLAGS.flip_average,
             FLAGS.overwrite, FLAGS.precision, **options)


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.evaluate")
