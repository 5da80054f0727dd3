r"""Trains the expression model: ``python -m fer_tf.train --flagfile=configs/NAME.cfg``.

Flags after ``--flagfile`` override the file, e.g.
``python -m fer_tf.train --flagfile=configs/demo.cfg --workdir=/tmp/demo --max_updates=50``.
Rerunning the same command resumes from the workdir's last checkpoint. The workdir
receives ``flags.txt`` (``python -m fer_tf.train --flagfile=WORKDIR/flags.txt`` relaunches
the run), checkpoints, TensorBoard events, ``best_model.keras`` and ``result.json``.
"""

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from fer_tf import atomic, cli, training
from fer_tf.data import pipeline

_DEFAULTS = training.TrainConfig()

flags.DEFINE_string("workdir", "", "Output directory (checkpoints, events, best model, "
                    "result.json); rerunning with the same workdir resumes.")
flags.DEFINE_string("dataset", _DEFAULTS.dataset, "Dataset name for fer_tf.data.sources "
                    "(affwild2, expw, fer2013, image_folder, demo, or merges like affwild2+expw).")
flags.DEFINE_string("data_dir", _DEFAULTS.data_dir, "Dataset root (merges: comma list in the "
                    "order of --dataset). For demo, written there if absent.")
flags.DEFINE_string("train_split", _DEFAULTS.train_split, "Training split.")
flags.DEFINE_string("val_split", _DEFAULTS.val_split, "Validation split.")
flags.DEFINE_string("val_dataset", _DEFAULTS.val_dataset, "Validation dataset if it differs "
                    "from --dataset (e.g. affwild2 when training on affwild2+expw).")
flags.DEFINE_string("val_data_dir", _DEFAULTS.val_data_dir, "Root of --val_dataset ('' = "
                    "--data_dir).")
flags.DEFINE_integer("image_size", _DEFAULTS.image_size, "Side of the decoded uint8 images "
                     "(the model resizes to its own input size in-graph).")
flags.DEFINE_enum("backbone", _DEFAULTS.backbone, list(training.BACKBONES),
                  "senet50 (the paper) or a small SE-ResNet for CPU demos.")
flags.DEFINE_string("backbone_weights", _DEFAULTS.backbone_weights,
                    "Converted VGGFace2 weights (.weights.h5 from `python -m weights_conversion "
                    "--src senet50_ft_weight.pkl --dst senet50_ft.weights.h5`).")
flags.DEFINE_bool("random_init", _DEFAULTS.random_init, "Train the backbone from random "
                  "initialisation instead of --backbone_weights.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Images per optimiser update (all "
                     "replicas).")
flags.DEFINE_integer("micro_batches", _DEFAULTS.micro_batches, "Accumulated micro-batches per "
                     "update; BatchNorm sees batch_size/micro_batches images at a time.")
flags.DEFINE_float("lr_head", _DEFAULTS.lr_head, "Learning rate of the new head.")
flags.DEFINE_float("lr_backbone", _DEFAULTS.lr_backbone, "Learning rate of the backbone.")
flags.DEFINE_float("momentum", _DEFAULTS.momentum, "SGD momentum (PyTorch semantics).")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "Coupled L2 (PyTorch SGD "
                   "weight_decay) added to the gradients.")
flags.DEFINE_string("class_weights", _DEFAULTS.class_weights, "auto (max_count/count_c of the "
                    "training labels), none, or one comma-separated weight per class.")
flags.DEFINE_integer("validate_every", _DEFAULTS.validate_every, "Updates between validations.")
flags.DEFINE_integer("checkpoint_every", _DEFAULTS.checkpoint_every, "Updates between "
                     "checkpoints.")
flags.DEFINE_integer("max_updates", _DEFAULTS.max_updates, "Stop after this many updates.")
flags.DEFINE_integer("patience", _DEFAULTS.patience, "Stop after this many validations "
                     "without improvement (0: never).")
flags.DEFINE_bool("augment", _DEFAULTS.augment, "Random flip + ColorJitter (paper's values).")
flags.DEFINE_float("aug_shift", _DEFAULTS.aug_shift, "Random shift, as a fraction of the "
                   "side, after the flip (0: off, the paper).")
flags.DEFINE_float("aug_scale", _DEFAULTS.aug_scale, "Random zoom 1 +- this (0: off).")
flags.DEFINE_float("aug_rotation", _DEFAULTS.aug_rotation, "Random rotation +- degrees (0: off).")
flags.DEFINE_float("aug_erasing", _DEFAULTS.aug_erasing, "RandomErasing probability after "
                   "ColorJitter (0: off, the paper).")
flags.DEFINE_float("label_smoothing", _DEFAULTS.label_smoothing, "Label smoothing of the "
                   "cross-entropy (0: off, the paper).")
flags.DEFINE_enum("lr_schedule", _DEFAULTS.lr_schedule, ["constant", "cosine"],
                  "constant (the paper) or linear warm-up + cosine decay to 0 at --max_updates.")
flags.DEFINE_integer("warmup_updates", _DEFAULTS.warmup_updates, "Warm-up updates of "
                     "--lr_schedule=cosine.")
flags.DEFINE_bool("grayscale", _DEFAULTS.grayscale, "The model turns its input gray first "
                  "(gray training data such as FER2013); stored in the model file.")
flags.DEFINE_float("crop_margin", _DEFAULTS.crop_margin, "Stored in the model for prediction: "
                   "share of a detected face box added per side so crops are framed like the "
                   "training faces.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of initialisation, shuffling, augmentation.")
flags.DEFINE_enum("precision", _DEFAULTS.precision, list(training.PRECISIONS),
                  "Keras dtype policy; mixed_float16 adds loss scaling.")
flags.DEFINE_bool("xla", _DEFAULTS.xla, "XLA-compile the train step (single device only).")
flags.DEFINE_enum("distribute", _DEFAULTS.distribute, list(training.DISTRIBUTIONS),
                  "mirrored: tf.distribute.MirroredStrategy over all visible GPUs.")
flags.DEFINE_integer("log_every", _DEFAULTS.log_every, "Updates between log lines.")
flags.DEFINE_integer("eval_batch_size", _DEFAULTS.eval_batch_size, "Validation batch size.")
flags.DEFINE_integer("max_val_images", _DEFAULTS.max_val_images, "Validate on a fixed random "
                     "subset of this many images (0: all).")

flags.DEFINE_bool("cache_images", _DEFAULTS.cache_images, "Decode the images once into memory "
                  "(small datasets such as FER2013); same examples and order.")

FLAGS = flags.FLAGS
CONFIG_FLAGS = tuple(f.name for f in dataclasses.fields(training.TrainConfig)
                     if f.name != "num_classes" and f.name != "max_checkpoints")


def config_from_flags() -> training.TrainConfig:
    """The TrainConfig the parsed flags describe."""
    return training.TrainConfig(**{name: FLAGS[name].value for name in CONFIG_FLAGS})


def flagfile_text() -> str:
    """A flagfile that relaunches this run (all of this module's flags, resolved)."""
    lines = ["# Written by fer_tf.train. Relaunch (resumes from the last checkpoint):",
             f"#   python -m fer_tf.train --flagfile={os.path.join(FLAGS.workdir, 'flags.txt')}"]
    for name in ("workdir",) + CONFIG_FLAGS:
        lines.append(FLAGS[name].serialize())
    return "\n".join(lines) + "\n"


def write_flagfile(workdir: str):
    """Writes ``flags.txt`` into the workdir atomically."""
    atomic.write_text(os.path.join(workdir, "flags.txt"), flagfile_text())


def absolutize_paths():
    """Makes path flags absolute, so flags.txt relaunches the run from any directory."""
    for name in ("workdir", "backbone_weights"):
        if FLAGS[name].value:
            FLAGS[name].value = os.path.abspath(FLAGS[name].value)
    for name in ("data_dir", "val_data_dir"):
        if FLAGS[name].value:
            FLAGS[name].value = ",".join(os.path.abspath(p.strip())
                                         for p in FLAGS[name].value.split(","))


def recorded_flags(workdir: str) -> dict:
    """name -> value of the flags.txt in ``workdir`` (empty if there is none)."""
    path = os.path.join(workdir, "flags.txt")
    if not os.path.isfile(path):
        return {}
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--no") and "=" not in line:
                values[line[4:]] = "False"
            elif line.startswith("--") and "=" in line:
                name, _, value = line[2:].partition("=")
                values[name] = value
            elif line.startswith("--"):
                values[line[2:]] = "True"
    return values


def check_resume(config: training.TrainConfig):
    """Refuses to resume a workdir's checkpoint with settings that change its meaning."""
    checkpoints = os.path.join(FLAGS.workdir, training.CHECKPOINT_DIR)
    if not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
        return
    conflicts = training.resume_conflicts(recorded_flags(FLAGS.workdir), config)
    if conflicts:
        raise app.UsageError(
            f"--workdir={FLAGS.workdir} holds a checkpoint of a different run: "
            f"{'; '.join(conflicts)}. Pass those values to resume it, or a new --workdir "
            "to start another run")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (set it in the flagfile or on the command line)")
    absolutize_paths()
    config = config_from_flags()
    try:
        config.validate()
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from e
    check_resume(config)
    write_flagfile(FLAGS.workdir)
    try:
        result = training.train_and_evaluate(config, FLAGS.workdir)
    except training.TrainingInterrupted as e:
        logging.warning("%s", e)
        # The shell's convention: 128 + signal number.
        sys.exit(130 if e.signal_name == "SIGINT" else 143)
    except FloatingPointError as e:
        logging.error("%s", e)
        sys.exit(1)
    print(f"best validation ABAW score {result.get('val_abaw_score', float('nan')):.4f} "
          f"(macro F1 {result.get('val_f1', float('nan')):.4f}, accuracy "
          f"{result.get('val_accuracy', float('nan')):.4f}) at update {result['best_step']}; "
          f"details in {os.path.join(FLAGS.workdir, training.RESULT_FILE)}")
    print(json.dumps(result.get("val_per_class_f1", {}), indent=1))
    rejected = pipeline.decoder_rejected()
    if rejected:
        print(f"{len(rejected)} image file(s) passed the header check but the decoder "
              f"rejected them and they were skipped (named in the log): {', '.join(rejected[:5])}")


if __name__ == "__main__":
    cli.run(main, "fer_tf.train")
