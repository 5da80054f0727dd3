r"""Training throughput on one CUDA GPU: fer_tf (mixed precision + XLA) against PyTorch AMP.

    python benchmarks/gpu_train.py                       # H100-sized defaults: 4 x 64
    python benchmarks/gpu_train.py --device=cpu --backbone=tiny --micro_batch_size=2 \
        --precision=float32 --noxla --steps=1            # the CPU smoke path (tested)

The goal on one H100: fer_tf >= 1.2x PyTorch AMP and >= 2,500 images/s. The work per
step is the paper's (benchmarks/common_train.py): micro-batches accumulated into one
two-group SGD update with coupled weight decay and the class-weighted loss; fer_tf
uses the Keras policy given by --precision (mixed_float16 adds loss scaling) and
--xla; PyTorch uses torch.autocast with the same 16-bit type (+ GradScaler for float16).
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common_train  # noqa: E402

flags.DEFINE_enum("device", "cuda", ["cuda", "cpu"], "Where PyTorch runs; TensorFlow uses the "
                  "GPU it sees (none with --device=cpu).")
flags.DEFINE_enum("backbone", "senet50", ["senet50", "small", "tiny"], "Network.")
flags.DEFINE_integer("micro_batches", 4, "Micro-batches per update.")
flags.DEFINE_integer("micro_batch_size", 64, "Images per micro-batch (the paper: 64).")
flags.DEFINE_enum("precision", "mixed_float16", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "16-bit type on both sides (float32: no mixed precision / AMP).")
flags.DEFINE_bool("xla", True, "XLA-compile fer_tf's train step.")
flags.DEFINE_integer("steps", 20, "Timed updates.")
flags.DEFINE_integer("warmup", 3, "Untimed updates first (tracing, XLA compilation, autotune).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    if FLAGS.device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    else:
        import torch
        if not torch.cuda.is_available() or not tf.config.list_physical_devices("GPU"):
            raise app.UsageError("--device=cuda needs a CUDA GPU visible to both PyTorch and "
                                 "TensorFlow; use --device=cpu for the smoke path")
        # TF must not grab all GPU memory before PyTorch runs.
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    setup = common_train.Setup(backbone=FLAGS.backbone, micro_batches=FLAGS.micro_batches,
                               micro_batch_size=FLAGS.micro_batch_size, steps=FLAGS.steps,
                               warmup=FLAGS.warmup, precision=FLAGS.precision, xla=FLAGS.xla,
                               device=FLAGS.device)
    print(common_train.format_table(setup, common_train.compare(setup)))


if __name__ == "__main__":
    app.run(main)
