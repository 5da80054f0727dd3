r"""Trains the expression model: ``python -m fer_tf.train --flagfile=configs/NAME.cfg``.

Flags after ``--flagfile`` override the file, e.g.
``python -m fer_tf.train --flagfile=configs/demo.cfg --workdir=/tmp/demo --max_updates=50``.
Rerunning the same command resumes from the workdir's last checkpoint. The workdir
receives ``flags.txt`` (``python -m fer_tf.train --flagfile=WORKDIR/flags.txt`` relaunches
the run), checkpoints, TensorBoard events, ``best_model.keras`` and ``result.json``.
With ``--distribute=multi_worker`` every machine runs the same command with its own
``TF_CONFIG``; only the chief writes there (docs/distributed.md).
"""

import json
import os
import sys

# TensorFlow reads this once, at import. On CPUs where it leaves convolutions to Eigen
# by default (AVX2 without AVX-512), oneDNN trains the FER2013 networks much faster
# (benchmarks/fer48_train_speed.py, the README); elsewhere it is on already. A value
# the user set wins; once TensorFlow is loaded (an importing program) it is too late.
if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from fer_tf import atomic, cli, train_config, training  # noqa: E402
from fer_tf.data import pipeline  # noqa: E402

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def define_flags():
    """--workdir, and one flag per `TrainConfig` setting, its help from the field."""
    flags.DEFINE_string("workdir", "", "Output directory (checkpoints, events, best model, "
                        "result.json); rerunning with the same workdir resumes.")
    for field in train_config.flag_fields():
        if field.metadata["choices"]:
            flags.DEFINE_enum(field.name, field.default, list(field.metadata["choices"]),
                              field.metadata["help"])
        else:
            _DEFINE[field.type](field.name, field.default, field.metadata["help"])


FLAGS = flags.FLAGS
CONFIG_FLAGS = tuple(field.name for field in train_config.flag_fields())


def config_from_flags() -> train_config.TrainConfig:
    """The TrainConfig the parsed flags describe."""
    return train_config.TrainConfig(**{name: FLAGS[name].value for name in CONFIG_FLAGS})


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
    for name in ("teacher", "init_from"):  # a path, or a shipped model's name
        if FLAGS[name].value and os.path.exists(FLAGS[name].value):
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


def check_resume(config: train_config.TrainConfig):
    """Refuses to resume a workdir's checkpoint with settings that change its meaning."""
    checkpoints = os.path.join(FLAGS.workdir, training.CHECKPOINT_DIR)
    if not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
        return
    conflicts = train_config.resume_conflicts(recorded_flags(FLAGS.workdir), config)
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
    # The first TensorFlow operation: MultiWorkerMirroredStrategy must configure the
    # collectives before anything else initialises the runtime.
    strategy = training.make_strategy(config)
    if training.is_chief(strategy):
        write_flagfile(FLAGS.workdir)
    try:
        result = training.train_and_evaluate(config, FLAGS.workdir, strategy=strategy)
    except training.WorkerLost as e:
        cli.fail("fer_tf.train", e, code=1)
    except training.TrainingInterrupted as e:
        logging.warning("%s", e)
        # The shell's convention: 128 + signal number.
        sys.exit(130 if e.signal_name == "SIGINT" else 143)
    except FloatingPointError as e:
        logging.error("%s", e)
        sys.exit(1)
    if not training.is_chief(strategy):
        return  # the chief reports
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
    define_flags()
    cli.run(main, "fer_tf.train")
