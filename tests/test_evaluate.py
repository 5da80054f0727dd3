"""fer_tf.evaluate on the demo data (Aff-Wild2 layout) with a tiny .keras model."""

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk_metrics

from fer_tf import evaluate, inference, model as model_lib, train_config, training
from fer_tf.data import demo, examples, sources


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    demo.write_demo_dataset(root, train_videos=2, val_videos=3, frames_per_video=40, seed=1)
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(5)
    model = model_lib.build_expression_model("tiny")
    # A random head gives nearly equal logits; scaling it up makes the argmax follow
    # the image, so predictions vary from frame to frame as a trained model's do.
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 300.0, bias])
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def _independent_predictions(model_path, paths):
    """Argmax of the saved model on JPEGs decoded by TF (crops are 112 already)."""
    model = keras.saving.load_model(model_path, compile=False)
    images = np.stack([tf.io.decode_jpeg(tf.io.read_file(p), channels=3).numpy() for p in paths])
    assert images.shape[1:] == (112, 112, 3)
    # A fully dynamic signature: the model's in-graph resize fails to trace on a static
    # input size other than its own (tf.cond + ensure_shape in preprocessing.resize).
    call = tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    return np.argmax(call(images.astype(np.float32)).numpy(), axis=1)


def test_scores_equal_sklearn_and_report_files(demo_dir, model_file, tmp_path):
    demo_dir = shutil.copytree(demo_dir, tmp_path / "demo")  # a private copy to corrupt
    source = sources.load_source("demo", demo_dir, "validation")
    # A corrupt crop is skipped and counted, not fatal.
    bad = source.paths[7]
    with open(bad, "r+b") as f:
        f.truncate(200)
    out = tmp_path / "report"
    result = evaluate.evaluate(str(model_file), "demo", str(demo_dir), "validation",
                               smooth_window=5, output_dir=str(out), batch_size=16)
    assert result["num_skipped"] == 1 and result["num_images"] == len(source) - 1

    keep = [i for i, p in enumerate(source.paths) if p != bad]
    labels = source.labels[keep]
    preds = _independent_predictions(model_file, [source.paths[i] for i in keep])
    assert len(np.unique(preds)) > 1  # the check below is not about a constant predictor
    f1 = sk_metrics.f1_score(labels, preds, average="macro", labels=range(7), zero_division=0)
    per_class = sk_metrics.f1_score(labels, preds, average=None, labels=range(7), zero_division=0)
    accuracy = sk_metrics.accuracy_score(labels, preds)
    raw = result["raw"]
    # Same predictions, so the numbers agree to float rounding (1e-12).
    assert raw["f1"] == pytest.approx(f1, abs=1e-12)
    assert raw["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert raw["abaw_score"] == pytest.approx(0.67 * f1 + 0.33 * accuracy, abs=1e-12)
    np.testing.assert_allclose(list(raw["per_class_f1"].values()), per_class, atol=1e-12)
    np.testing.assert_array_equal(raw["confusion_matrix"],
                                  sk_metrics.confusion_matrix(labels, preds, labels=range(7)))

    report = json.loads((out / evaluate.REPORT_FILE).read_text())
    assert report["raw"]["f1"] == raw["f1"] and report["smooth_window"] == 5
    assert set(report["raw"]["per_class_f1"]) == set(report["class_names"]) and "smoothed" in report
    for png in (evaluate.CONFUSION_PNG, evaluate.CONFUSION_SMOOTHED_PNG, evaluate.F1_PNG):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One CSV per video, one row per scored frame, in frame order.
    videos = np.asarray(source.videos)[keep]
    for video in np.unique(videos):
        lines = (out / evaluate.PER_VIDEO_DIR / f"{video}.csv").read_text().splitlines()
        assert lines[0].startswith("frame,label,prediction,p_Neutral")
        assert len(lines) - 1 == int((videos == video).sum())
        frames = [int(line.split(",")[0]) for line in lines[1:]]
        assert frames == sorted(frames)
    assert "Table 1" in evaluate.format_tables(result) and "Table 2" in evaluate.format_tables(result)


def test_smoothing_changes_numbers_and_window_1_is_raw(demo_dir, model_file):
    classifier = inference.load_classifier(model_file, batch_size=32)
    source = sources.load_source("demo", demo_dir, "validation")
    one = evaluate.evaluate_source(classifier, source, smooth_window=1, batch_size=32)
    # K=1 only fills frames that were not scored: the scored frames keep their values.
    np.testing.assert_array_equal(one["smoothed_probabilities"], one["probabilities"])
    assert one["smoothed"] == one["raw"]
    wide = evaluate.evaluate_source(classifier, source, smooth_window=15, batch_size=32)
    assert wide["raw"] == one["raw"]
    assert not np.allclose(wide["smoothed_probabilities"], wide["probabilities"])
    assert wide["smoothed"]["confusion_matrix"] != wide["raw"]["confusion_matrix"]
    np.testing.assert_allclose(wide["smoothed_probabilities"].sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        evaluate.evaluate_source(classifier, source, smooth_window=4)


@pytest.mark.slow
def test_reproduces_the_training_runs_validation_numbers(demo_dir, tmp_path):
    """A short training run on the demo data; evaluating its workdir on the same split
    gives the numbers its result.json reports (same decode, same images; 1e-9)."""
    config = train_config.TrainConfig(
        dataset="affwild2", data_dir=str(demo_dir), backbone="tiny", random_init=True,
        batch_size=16, micro_batches=1, max_updates=4, validate_every=2, checkpoint_every=100,
        log_every=2, patience=0, eval_batch_size=24, augment=False, lr_head=0.05,
        lr_backbone=0.01, image_size=64, class_weights="none")
    workdir = tmp_path / "run"
    reported = training.train_and_evaluate(config, str(workdir))
    assert (workdir / "best_model.keras").is_file() and "val_abaw_score" in reported
    # image_size 64 = the tiny backbone's own size (training's tf.function cannot trace
    # preprocessing.resize for a different static size: reported). The decode size is
    # passed as the entry point would read it from the workdir's flags.txt, which
    # train_and_evaluate alone does not write.
    result = evaluate.evaluate(str(workdir), "affwild2", str(demo_dir), "validation",
                               input_size=64, batch_size=32)
    assert result["num_images"] == reported["val_num_images"]
    assert result["raw"]["abaw_score"] == pytest.approx(reported["val_abaw_score"], abs=1e-9)
    assert result["raw"]["f1"] == pytest.approx(reported["val_f1"], abs=1e-9)
    assert result["raw"]["accuracy"] == pytest.approx(reported["val_accuracy"], abs=1e-9)
    for name, f1 in reported["val_per_class_f1"].items():
        assert result["raw"]["per_class_f1"][name] == pytest.approx(f1, abs=1e-9)


def test_still_images_real_fer2013_no_smoothing(fer2013_dir, model_file):
    """Gray 48x48 FER2013 files (real data): decoded to RGB, scored, no smoothed report."""
    full = sources.load_source("fer2013", fer2013_dir, "test")
    pick = np.random.default_rng(0).choice(len(full), 40, replace=False)
    subset = examples.subset(full, pick)
    classifier = inference.load_classifier(model_file, batch_size=16)
    result = evaluate.evaluate_source(classifier, subset, smooth_window=5, batch_size=16)
    assert result["num_images"] == 40 and "smoothed" not in result
    assert np.asarray(result["raw"]["confusion_matrix"]).sum() == 40
    preds = np.argmax(result["probabilities"], axis=1)
    assert result["raw"]["accuracy"] == pytest.approx(np.mean(preds == subset.labels), abs=1e-12)


def test_report_folder_is_checked_before_any_work(demo_dir, model_file, tmp_path):
    # Into the dataset, or replacing a report, is refused before the model is loaded
    # (a missing model would otherwise be the error).
    absent_model = str(tmp_path / "no_model.keras")
    with pytest.raises(ValueError, match="would mix outputs with the input"):
        evaluate.evaluate(absent_model, "demo", str(demo_dir), "validation",
                          output_dir=str(demo_dir / "report"))
    out = tmp_path / "report"
    out.mkdir()
    (out / evaluate.REPORT_FILE).write_text("an earlier report")
    with pytest.raises(FileExistsError, match="already holds evaluation.json; pass --overwrite"):
        evaluate.evaluate(absent_model, "demo", str(demo_dir), "validation", output_dir=str(out))
    assert (out / evaluate.REPORT_FILE).read_text() == "an earlier report"
    evaluate.evaluate(str(model_file), "demo", str(demo_dir), "validation", output_dir=str(out),
                      batch_size=16, overwrite=True)
    assert json.loads((out / evaluate.REPORT_FILE).read_text())["split"] == "validation"
