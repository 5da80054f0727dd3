r"""Images/s of the full train step, fer_tf against the paper's PyTorch loop, on the CPU.

    python benchmarks/train_step.py [--micro_batches=4 --micro_batch_size=4 --steps=3]

Same work on both sides (see benchmarks/common_train.py): SE-ResNet-50 at 224x224,
micro-batches accumulated into one two-group SGD update with coupled weight decay and
the class-weighted loss. Prints a table and ``ratio fer_tf / pytorch: X.XX``.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common_train  # noqa: E402

flags.DEFINE_enum("backbone", "senet50", ["senet50", "small", "tiny"], "Network.")
flags.DEFINE_integer("micro_batches", 4, "Micro-batches per update.")
flags.DEFINE_integer("micro_batch_size", 4, "Images per micro-batch (64 in the paper; small "
                     "here so the CPU run finishes in minutes).")
flags.DEFINE_integer("steps", 3, "Timed updates.")
flags.DEFINE_integer("warmup", 1, "Untimed updates first (tracing, allocation).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # a CPU benchmark even on a GPU machine
    setup = common_train.Setup(backbone=FLAGS.backbone, micro_batches=FLAGS.micro_batches,
                               micro_batch_size=FLAGS.micro_batch_size, steps=FLAGS.steps,
                               warmup=FLAGS.warmup, device="cpu")
    print(common_train.format_table(setup, common_train.compare(setup)))


if __name__ == "__main__":
    app.run(main)
