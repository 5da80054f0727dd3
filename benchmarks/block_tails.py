"""Inference speed with and without `fer_tf.fuse_block_tails`, the shipped model.

Both sides are what `fer_tf.inference` runs (BatchNorm folded, weights frozen), in
float32 and in bfloat16; the only difference is each SE block's excite-add-ReLU tail as
three TensorFlow kernels or one XLA-compiled pass. One process, batches of `--batch`
random uint8 48x48 faces (speed does not depend on the pixels), one warm-up call each,
then `--rounds` timed passes of `--images` images with the four models taking turns;
each model's rate is its best pass. Prints images/s, the largest probability
difference against the unfused model, and a ratio line per precision.

    python benchmarks/block_tails.py [--model=fer2013] [--batch=64] [--rounds=5]
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "fer_tf .keras model (default: the shipped fer2013 model).")
flags.DEFINE_integer("batch", 64, "Images per model call.")
flags.DEFINE_integer("images", 1920, "Images per timed pass.")
flags.DEFINE_integer("rounds", 5, "Timed passes per model, interleaved; the best counts.")


def _inference_function(model, precision, fused):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from fer_tf import compute_precision, fold_batch_norm, fuse_block_tails, inference  # pylint: disable=import-outside-toplevel
    if precision == "bfloat16":
        model = compute_precision.backbone_in_bfloat16(model)
    if fused:
        model = fuse_block_tails.fuse_block_tails(model)
    model = fold_batch_norm.fold_batch_norms(model)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def probabilities(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    frozen = inference.freeze(probabilities)
    return lambda images: frozen(tf.constant(images)).numpy()


def main(argv):
    del argv
    import numpy as np

    from fer_tf import model as model_lib, pretrained
    model = model_lib.load_expression_model(pretrained.resolve(FLAGS.model))
    images = np.random.default_rng(0).integers(0, 256, (FLAGS.images, 48, 48, 3), np.uint8)
    settings = [(p, f) for p in ("float32", "bfloat16") for f in (False, True)]
    functions = [_inference_function(model, p, f) for p, f in settings]
    for fn in functions:
        fn(images[:FLAGS.batch])
    rates, outputs = [0.0] * len(settings), [None] * len(settings)
    for _ in range(FLAGS.rounds):
        for k, fn in enumerate(functions):
            start = time.perf_counter()
            out = [fn(images[i:i + FLAGS.batch]) for i in range(0, len(images), FLAGS.batch)]
            rates[k] = max(rates[k], len(images) / (time.perf_counter() - start))
            outputs[k] = np.concatenate(out)
    print(f"model {pretrained.describe(FLAGS.model)}; batch {FLAGS.batch}, best of {FLAGS.rounds}")
    print(f"{'precision':<10}{'block tails':<14}{'images/s':>10}{'max |dp|':>10}")
    for k, (precision, fused) in enumerate(settings):
        diff = np.abs(outputs[k] - outputs[k - 1 if fused else k]).max()
        print(f"{precision:<10}{'fused (XLA)' if fused else 'unfused':<14}{rates[k]:>10.0f}"
              f"{diff:>10.1e}")
    for k in (1, 3):
        print(f"speed ratio fused / unfused ({settings[k][0]}): {rates[k] / rates[k - 1]:.2f}")


if __name__ == "__main__":
    app.run(main)
