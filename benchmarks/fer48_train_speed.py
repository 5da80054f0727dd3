"""Training speed of the FER2013 backbones on this CPU: oneDNN on/off, float32/bfloat16.

Each setting runs in its own process (TF reads TF_ENABLE_ONEDNN_OPTS at import), one
after another in one run: a built expression model with the FER2013 augmentation,
`fer_tf.train_step.make_train_step`, batch `--batch` of 48x48 uint8 images, `--steps`
timed steps after 3 warm-up steps. Prints images/s per setting (TF's default, oneDNN
off, oneDNN on, bfloat16), then ratio lines: oneDNN on / off and on / TF's default
(float32) and bfloat16 / float32 (oneDNN on), per backbone; with --center_crops, also
each crop's rate over the full 48x48 input's.

    python benchmarks/fer48_train_speed.py [--backbones=fer48_w16,fer48_w32] [--steps=10]
        [--center_crops=0,40]
"""

import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("backbones", ["fer48_w16", "fer48_w24", "fer48_w32", "fer48_s4_w16"],
                  "Backbones of fer_tf.model.BACKBONES to time.")
flags.DEFINE_integer("batch", 128, "Images per train step.")
flags.DEFINE_integer("steps", 10, "Timed steps per setting.")
flags.DEFINE_bool("bfloat16", True, "Also time --precision=mixed_bfloat16 (oneDNN on).")
flags.DEFINE_list("center_crops", ["0"], "--center_crop values to time per backbone (0: the "
                  "network sees the whole 48x48 face).")

_CHILD = r"""
import json, sys, time
import keras, numpy as np, tensorflow as tf
from fer_tf import model as model_lib, optim, train_step
backbone, precision, batch, steps, crop = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
keras.config.set_dtype_policy(precision)
model = model_lib.build_expression_model(backbone, augment=True, seed=0, augment_options=dict(
    shift=0.1, scale=0.1, rotation=10, erasing=0.5), grayscale=True, center_crop=crop or None)
sgd = optim.PaperSGD(optim.SGDHyperParams(0.1, 0.1, 0.9, 5e-4))
sgd.build(model.trainable_variables)
step = train_step.make_train_step(model, sgd, 1, label_smoothing=0.1)
rng = np.random.default_rng(0)
x = tf.constant(rng.integers(0, 256, (batch, 48, 48, 3), dtype=np.uint8))
y = tf.constant(rng.integers(0, 7, batch).astype("int32"))
w = tf.ones(batch)
for _ in range(3):
    float(step(x, y, w)["loss"])
start = time.perf_counter()
for _ in range(steps):
    float(step(x, y, w)["loss"])
print(json.dumps({"images_per_second": steps * batch / (time.perf_counter() - start)}))
"""


def _time(backbone, crop, precision, onednn):
    """images/s of one setting in a child process; onednn "1", "0" or None (TF's default)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    out = subprocess.run([sys.executable, "-c", _CHILD, backbone, precision, str(FLAGS.batch),
                          str(FLAGS.steps), str(crop)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"]


def main(argv):
    del argv
    # (label, precision, TF_ENABLE_ONEDNN_OPTS): TF's default differs between CPUs
    # (convolutions run on oneDNN by default only on some), hence its own column.
    settings = [("float32 TF default", "float32", None), ("float32 Eigen", "float32", "0"),
                ("float32 oneDNN", "float32", "1")]
    if FLAGS.bfloat16:
        settings.append(("bfloat16 oneDNN", "mixed_bfloat16", "1"))
    print(f"train step, batch {FLAGS.batch} at 48x48, augmentation on, {os.cpu_count()} CPUs")
    print(f"{'backbone':<16}" + "".join(f"{label:>24}" for label, _, _ in settings))
    rates = {}
    for backbone in FLAGS.backbones:
        for crop in map(int, FLAGS.center_crops):
            rates[backbone, crop] = r = [_time(backbone, crop, p, o) for _, p, o in settings]
            label = backbone + (f" crop {crop}" if crop else "")
            print(f"{label:<16}" + "".join(f"{x:>20.0f} i/s" for x in r), flush=True)
    for (backbone, crop), r in rates.items():
        line = (f"ratio {backbone}{f' crop {crop}' if crop else ''}: oneDNN / Eigen (float32) "
                f"{r[2] / r[1]:.2f}, oneDNN / TF default (float32) {r[2] / r[0]:.2f}")
        if FLAGS.bfloat16:
            line += f", bfloat16 / float32 (oneDNN) {r[3] / r[2]:.2f}"
        full = rates.get((backbone, 0))
        if crop and full:
            line += ", crop / full: " + ", ".join(
                f"{label} {x / f:.2f}" for (label, _, _), x, f in zip(settings, r, full))
        print(line)


if __name__ == "__main__":
    app.run(main)
