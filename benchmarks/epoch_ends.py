"""What tf.data's autotuner costs at epoch ends in `python -m fer_tf.train`.

`fer_tf.training` builds one input pipeline per epoch (a different, reproducible order
each time) and drops its iterator when the epoch ends. With tf.data's autotuner on,
that drop waited for the autotuner's thread, so fer_tf's pipelines run with it off
(`fer_tf.data.pipeline.AUTOTUNE_INPUT`). This script runs the same short training both
ways, each in its own process, one after the other in one run: `configs/fer2013_cpu.cfg`
with `--backbone` at batch 64 (as measured in the README) for `--updates` updates (3 epochs
by default), validation and periodic checkpoints off, logging every 20 updates, in a
temporary workdir. Prints per side the
wall time of the whole command and its slowest 20-update window (with where it ended),
then the ratio line (autotuner on / off, wall time).

    python benchmarks/epoch_ends.py [--data_dir=../shared/data/fer2013] [--updates=1250]
"""

import datetime
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                             "data", "fer2013"), "FER2013 folders (train/ used).")
flags.DEFINE_integer("updates", 1250, "Updates per side (403 per epoch at batch 64).")
flags.DEFINE_string("backbone", "fer48_w16x2", "Backbone of fer_tf.model.BACKBONES.")
flags.DEFINE_list("sides", ["on", "off"], "Autotuner settings to run, in this order.")

_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fer2013_cpu.cfg")
_CHILD = ("import runpy, sys\n"
          "from fer_tf.data import pipeline\n"
          "pipeline.AUTOTUNE_INPUT = sys.argv[1] == 'on'\n"
          "sys.argv = ['fer_tf.train'] + sys.argv[2:]\n"
          "runpy.run_module('fer_tf.train', run_name='__main__', alter_sys=True)\n")
# absl's log prefix: I1203 12:40:39.123456 ... update 1220/1250
_UPDATE_LINE = re.compile(r"^I\d{4} (\d\d:\d\d:\d\d\.\d+) .*\] update (\d+)/", re.M)


def _slowest_window(log):
    """(seconds, update) of the longest gap between consecutive update log lines."""
    points = [(datetime.datetime.strptime(t, "%H:%M:%S.%f"), int(u))
              for t, u in _UPDATE_LINE.findall(log)]
    gaps = [((b - a).total_seconds() % 86400, u) for (a, _), (b, u) in zip(points, points[1:])]
    return max(gaps) if gaps else (float("nan"), 0)


def _run(side, workdir):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1")
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, side, f"--flagfile={_CONFIG}",
         f"--workdir={workdir}", f"--data_dir={os.path.abspath(FLAGS.data_dir)}",
         f"--backbone={FLAGS.backbone}", "--batch_size=64", f"--max_updates={FLAGS.updates}",
         "--log_every=20",
         "--validate_every=1000000", "--checkpoint_every=1000000"],
        capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"fer_tf.train failed (autotuner {side}): {out.stderr.strip()[-2000:]}")
    return wall, _slowest_window(out.stderr)


def main(argv):
    del argv
    if not os.path.isdir(os.path.join(FLAGS.data_dir, "train")):
        raise app.UsageError(f"--data_dir={FLAGS.data_dir} has no train/ folder: pass the "
                             "FER2013 folders (train/, test/)")
    print(f"python -m fer_tf.train --flagfile=configs/fer2013_cpu.cfg --backbone="
          f"{FLAGS.backbone} --batch_size=64 --max_updates={FLAGS.updates}, no validation")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in FLAGS.sides:
            results[side] = _run(side, os.path.join(tmp, side))
    print(f"{'autotuner':<12}{'wall s':>10}{'slowest 20 updates s':>24}{'ending at':>12}")
    for side, (wall, (gap, update)) in results.items():
        print(f"{side:<12}{wall:>10.1f}{gap:>24.1f}{update:>12}")
    if {"on", "off"} <= results.keys():
        print(f"wall time ratio, autotuner on / off (fer_tf's default): "
              f"{results['on'][0] / results['off'][0]:.2f}")


if __name__ == "__main__":
    app.run(main)
