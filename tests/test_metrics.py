"""ABAW metric against scikit-learn (tolerance 1e-6 everywhere)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, f1_score

from fer_tf import metrics

C = 7
TOL = 1e-6


def _sklearn(labels, preds, weights=None):
    f1 = f1_score(labels, preds, average="macro", labels=list(range(C)), zero_division=0,
                  sample_weight=weights)
    acc = accuracy_score(labels, preds, sample_weight=weights)
    per_class = f1_score(labels, preds, average=None, labels=list(range(C)), zero_division=0,
                         sample_weight=weights)
    return f1, acc, per_class


def _random(seed, n=500, absent=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    logits = rng.normal(size=(n, C)).astype(np.float32)
    # Make predictions correlate with labels so F1 values are not all near chance.
    logits[np.arange(n), labels] += rng.uniform(0, 2, n).astype(np.float32)
    if absent is not None:
        keep = labels != absent
        labels, logits = labels[keep], logits[keep]
        logits[:, absent] = -100.0
    return labels, logits


def test_numpy_abaw_score_matches_sklearn():
    labels, logits = _random(0)
    preds = logits.argmax(1)
    got = metrics.abaw_score(labels, preds, C)
    f1, acc, per_class = _sklearn(labels, preds)
    assert abs(got["f1"] - f1) < TOL
    assert abs(got["accuracy"] - acc) < TOL
    assert abs(got["abaw_score"] - (0.67 * f1 + 0.33 * acc)) < TOL
    np.testing.assert_allclose(got["per_class_f1"], per_class, atol=TOL)


def test_numpy_absent_class_counts_as_zero():
    # Class 6 never appears in labels nor predictions: its F1 is 0 and still in the mean.
    got = metrics.abaw_score([0, 1, 1, 2], [0, 1, 2, 2], C)
    assert got["per_class_f1"][6] == 0.0
    assert abs(got["f1"] - (1.0 + 2 / 3 + 2 / 3) / 7) < TOL
    assert abs(got["accuracy"] - 0.75) < TOL


def test_numpy_rejects_out_of_range():
    with pytest.raises(ValueError, match="drop unannotated"):
        metrics.confusion_matrix([0, -1], [0, 0], C)
    with pytest.raises(ValueError, match="same length"):
        metrics.confusion_matrix([0, 1], [0], C)


@pytest.mark.parametrize("absent", [None, 3])
def test_streaming_matches_sklearn(absent):
    labels, logits = _random(1, absent=absent)
    metric = metrics.AbawScore(num_classes=C)
    for start in range(0, len(labels), 64):  # uneven last batch on purpose
        metric.update_state(labels[start:start + 64], logits[start:start + 64])
    f1, acc, per_class = _sklearn(labels, logits.argmax(1))
    assert abs(float(metric.f1()) - f1) < TOL
    assert abs(float(metric.accuracy()) - acc) < TOL
    assert abs(float(metric.result()) - (0.67 * f1 + 0.33 * acc)) < TOL
    np.testing.assert_allclose(metric.per_class_f1().numpy(), per_class, atol=TOL)
    report = metric.scores()
    assert abs(report["f1"] - f1) < TOL and abs(report["accuracy"] - acc) < TOL
    np.testing.assert_allclose(report["per_class_f1"], per_class, atol=TOL)
    if absent is not None:
        assert metric.per_class_f1().numpy()[absent] == 0.0


def test_streaming_int_predictions_and_sample_weights():
    labels, logits = _random(2)
    preds = logits.argmax(1)
    weights = np.random.default_rng(3).uniform(0.1, 5.0, len(labels))
    metric = metrics.AbawScore()
    for start in range(0, len(labels), 100):
        sl = slice(start, start + 100)
        metric.update_state(labels[sl], preds[sl], sample_weight=weights[sl])
    f1, acc, _ = _sklearn(labels, preds, weights)
    assert abs(float(metric.f1()) - f1) < TOL
    assert abs(float(metric.accuracy()) - acc) < TOL
    np.testing.assert_allclose(
        metric.confusion_matrix().numpy(), metrics.confusion_matrix(labels, preds, C, weights), rtol=1e-12)


def test_streaming_ignores_unannotated_and_resets():
    metric = metrics.AbawScore()
    metric.update_state([0, -1, 1], [0, 5, 1])
    assert float(metric.accuracy()) == 1.0
    assert float(metric.confusion_matrix().numpy().sum()) == 2.0
    metric.reset_state()
    assert float(metric.confusion_matrix().numpy().sum()) == 0.0
    assert float(metric.result()) == 0.0


def test_streaming_in_tf_function():
    labels, logits = _random(4)
    metric = metrics.AbawScore()

    @tf.function
    def update(y, p):
        metric.update_state(y, p)

    for start in range(0, len(labels), 128):
        update(tf.constant(labels[start:start + 128], tf.int32), tf.constant(logits[start:start + 128]))
    f1, acc, _ = _sklearn(labels, logits.argmax(1))
    assert abs(float(tf.function(metric.result)()) - (0.67 * f1 + 0.33 * acc)) < TOL


def test_config_round_trip():
    metric = metrics.AbawScore(num_classes=8, name="val_abaw")
    clone = metrics.AbawScore.from_config(metric.get_config())
    assert clone.num_classes == 8 and clone.name == "val_abaw"


_MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from sklearn.metrics import accuracy_score, f1_score
    from fer_tf.metrics import AbawScore

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 7, 400)
    logits = rng.normal(size=(400, 7)).astype(np.float32)
    logits[np.arange(400), labels] += 1.0
    with strategy.scope():
        metric = AbawScore()

    @tf.function
    def step(y, p):
        strategy.run(lambda a, b: metric.update_state(a, b), args=(y, p))

    for b in range(4):  # 4 global batches of 100, 50 per replica, each replica different data
        sl = slice(b * 100, (b + 1) * 100)
        ds_y = strategy.experimental_distribute_values_from_function(
            lambda ctx, sl=sl: labels[sl][ctx.replica_id_in_sync_group::2])
        ds_p = strategy.experimental_distribute_values_from_function(
            lambda ctx, sl=sl: logits[sl][ctx.replica_id_in_sync_group::2])
        step(ds_y, ds_p)
    preds = logits.argmax(1)
    f1 = f1_score(labels, preds, average="macro", labels=list(range(7)), zero_division=0)
    acc = accuracy_score(labels, preds)
    assert abs(float(metric.f1()) - f1) < 1e-6, (float(metric.f1()), f1)
    assert abs(float(metric.accuracy()) - acc) < 1e-6, (float(metric.accuracy()), acc)
    assert abs(float(metric.result()) - (0.67 * f1 + 0.33 * acc)) < 1e-6
    assert float(metric.confusion_matrix().numpy().sum()) == 400.0
    print("MIRRORED_OK")
""")


def test_streaming_under_mirrored_strategy_two_cpus():
    # A subprocess: logical devices must be configured before TF initialises, and this
    # pytest process has initialised TF already.
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "MIRRORED_OK" in proc.stdout, proc.stderr[-3000:]


def test_in_keras_evaluate():
    import keras  # pylint: disable=import-outside-toplevel

    labels, logits = _random(6, n=200)
    model = keras.Sequential([keras.Input((C,)), keras.layers.Identity()])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[metrics.AbawScore()])
    results = model.evaluate(logits, labels, batch_size=32, return_dict=True, verbose=0)
    f1, acc, _ = _sklearn(labels, logits.argmax(1))
    assert abs(results["abaw_score"] - (0.67 * f1 + 0.33 * acc)) < TOL
