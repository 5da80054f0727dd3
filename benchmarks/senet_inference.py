"""SENet-50 inference: images/s of fer_tf's Keras model vs the PyTorch reference.

Both run in this process, on this CPU, with the same number of threads, on the same
random weights, at 224x224, batch 1 and 32. Prints a table and a final ratio line
(Keras / PyTorch at the largest batch). Shared machines are noisy: read the ratio.

PyTorch's OpenMP threads degrade badly when other processes load the cores (measured
here: 2.8 s per image with 2 threads versus 0.13 s with 1 at a load average of 4.7),
so PyTorch is also timed with one thread and its better rate is the one compared.

    python benchmarks/senet_inference.py [--threads=2] [--batches=1,32] [--repeats=5]
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", os.cpu_count(), "Intra-op threads for both frameworks.")
flags.DEFINE_list("batches", ["1", "32"], "Batch sizes to measure.")
flags.DEFINE_integer("repeats", 5, "Timed calls per batch size (after warm-up); the median is reported.")
flags.DEFINE_integer("size", 224, "Input size.")
flags.DEFINE_bool("xla", True, "Also measure the Keras model compiled with XLA.")


def _median_rate(fn, batch, repeats):
    fn()  # warm-up: tracing, allocation
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import torch

    torch.set_num_threads(FLAGS.threads)

    from fer_tf import senet
    from weights_conversion import checkpoints, convert, torch_senet

    torch.manual_seed(0)
    reference = torch_senet.randomize_batchnorm(torch_senet.senet50(), torch.Generator().manual_seed(0)).eval()
    keras_model = senet.se_resnet50(input_shape=(FLAGS.size, FLAGS.size, 3))
    convert.assign_weights(keras_model, checkpoints.torch_state_to_arrays(reference))

    keras_fn = tf.function(lambda x: keras_model(x, training=False))
    xla_fn = tf.function(lambda x: keras_model(x, training=False), jit_compile=True)

    rows = []
    for batch in [int(b) for b in FLAGS.batches]:
        x = np.random.default_rng(0).uniform(-128, 128, (batch, FLAGS.size, FLAGS.size, 3)).astype(np.float32)
        x_tf = tf.constant(x)
        x_torch = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        torch_rate = 0.0
        for threads in sorted({1, FLAGS.threads}):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                torch_rate = max(torch_rate, _median_rate(lambda: reference(x_torch), batch, FLAGS.repeats))
        torch.set_num_threads(FLAGS.threads)
        keras_rate = _median_rate(lambda: keras_fn(x_tf).numpy(), batch, FLAGS.repeats)
        row = {"batch": batch, "pytorch": torch_rate, "keras": keras_rate}
        if FLAGS.xla:
            row["keras_xla"] = _median_rate(lambda: xla_fn(x_tf).numpy(), batch, FLAGS.repeats)
        rows.append(row)

    print(f"\nSENet-50 inference, {FLAGS.size}x{FLAGS.size}, {FLAGS.threads} threads, images/s (median of {FLAGS.repeats})")
    header = f"{'batch':>6} {'PyTorch*':>10} {'Keras':>10}" + (f" {'Keras+XLA':>10}" if FLAGS.xla else "") + f" {'best/PyTorch':>13}"
    print(header)
    for row in rows:
        best = max(row["keras"], row.get("keras_xla", 0.0))
        line = f"{row['batch']:>6} {row['pytorch']:>10.2f} {row['keras']:>10.2f}"
        if FLAGS.xla:
            line += f" {row['keras_xla']:>10.2f}"
        print(line + f" {best / row['pytorch']:>13.2f}")
    print("* PyTorch: the better of 1 and --threads threads")
    last = rows[-1]
    print(f"ratio keras / pytorch at batch {last['batch']}: {last['keras'] / last['pytorch']:.2f}"
          + (f" (xla: {last['keras_xla'] / last['pytorch']:.2f})" if FLAGS.xla else ""))


if __name__ == "__main__":
    app.run(main)
