r"""Builds the TFDS records of Aff-Wild2 or ExpW offline from the unpacked download.

Usage::

    python -m fer_tf.data.prepare --dataset=affwild2 --manual_dir=/data/affwild2 \
        --data_dir=~/tensorflow_datasets [--keep_other]
    python -m fer_tf.data.prepare --dataset=expw --manual_dir=/data/expw \
        --data_dir=~/tensorflow_datasets [--margin=0.2] [--min_confidence=...]

Through Apache Beam (``pip install 'fer_tf[beam]'``; docs/datasets.md)::

    python -m fer_tf.data.prepare --dataset=affwild2 ... --beam_runner=DirectRunner
    python -m fer_tf.data.prepare --dataset=affwild2 ... \
        --beam_options="--runner=FlinkRunner --flink_master=host:8081 --environment_type=LOOPBACK"

TFDS shows a progress bar per split; a summary line per split follows.
"""

import os
import shlex
import time

from absl import app, flags, logging

from fer_tf import atomic, cli
from fer_tf.data import tfds_builders

FLAGS = flags.FLAGS


def define_flags():
    """Flags live here, defined only when run as a program (library code never reads them)."""
    flags.DEFINE_enum("dataset", None, ["affwild2", "expw"], "Dataset to build.")
    flags.DEFINE_string("manual_dir", None, "The unpacked download (see the builder's instructions).")
    flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"),
                        "Where the TFRecord shards are written.")
    flags.DEFINE_bool("keep_other", False, "affwild2: keep the 2022+ 'Other' class as label 7.")
    flags.DEFINE_float("margin", 0.0, "expw: enlarge boxes by this fraction per side.")
    flags.DEFINE_float("min_confidence", None, "expw: drop boxes below this confidence.")
    flags.DEFINE_string("beam_runner", None,
                        "Build through Apache Beam with this runner (e.g. DirectRunner); "
                        "default: in this process, without Beam.")
    flags.DEFINE_string("beam_options", "",
                        "Beam pipeline options, as on a command line (e.g. \"--runner="
                        "DataflowRunner --project=P --region=R --temp_location=gs://B/tmp\"); "
                        "given alone, they also make the build go through Beam.")
    flags.mark_flags_as_required(["dataset", "manual_dir"])


def prepare(dataset: str, manual_dir, data_dir, beam_runner=None, beam_options=(),
            **options) -> dict:
    """Builds the records and returns {split: number of examples}.

    beam_runner, beam_options (a list of Beam arguments): build through Apache Beam,
    as tfds_builders.build; options: the builder's (keep_other, margin, min_confidence).
    """
    # TFDS writes <data_dir>/<name>/<version>/ and reuses a finished build. Records written
    # among the source images would mix the two; the reverse is TFDS's own convention
    # (manual_dir defaults to <data_dir>/downloads/manual), so it stays allowed.
    if atomic.is_within(data_dir, manual_dir):
        raise ValueError(f"--data_dir={data_dir} would mix outputs with the input "
                         f"--manual_dir={manual_dir}; choose a folder outside it")
    atomic.check_output_dir(data_dir, flag="--data_dir")
    start = time.monotonic()
    logging.info("Building %s from %s into %s", dataset, manual_dir, data_dir)
    builder = tfds_builders.build(dataset, manual_dir, data_dir, beam_runner=beam_runner,
                                  beam_options=beam_options, **options)
    counts = {name: split.num_examples for name, split in builder.info.splits.items()}
    for name, n in counts.items():
        logging.info("%s %s: %d examples", builder.info.full_name, name, n)
    logging.info("Done in %.0f s: %s", time.monotonic() - start, builder.data_dir)
    return counts


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = {}
    if FLAGS.dataset == "affwild2":
        options["keep_other"] = FLAGS.keep_other
    else:
        options.update(margin=FLAGS.margin, min_confidence=FLAGS.min_confidence)
    try:
        beam_options = shlex.split(FLAGS.beam_options)
    except ValueError as error:  # an unclosed quote: a user error, one line
        raise ValueError(f"--beam_options={FLAGS.beam_options!r}: {error}") from None
    counts = prepare(FLAGS.dataset, FLAGS.manual_dir, FLAGS.data_dir,
                     beam_runner=FLAGS.beam_runner, beam_options=beam_options, **options)
    print(" ".join(f"{name}={n}" for name, n in counts.items()))


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.data.prepare")
