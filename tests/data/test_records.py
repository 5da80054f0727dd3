"""Training from built TFDS records (``--dataset=tfds:affwild2``) equals training from files."""

import keras
import numpy as np
import pytest

from fer_tf import evaluate, model as model_lib, train_config, training
from fer_tf.data import demo, records, tfds_builders


@pytest.fixture(scope="module")
def demo_both_ways(tmp_path_factory):
    """A small demo tree in the Aff-Wild2 layout, and its records built by TFDS."""
    root = tmp_path_factory.mktemp("records")
    tree = root / "affwild2"
    demo.write_demo_dataset(tree, train_videos=8, val_videos=1, frames_per_video=30, seed=5)
    tfds_builders.build("affwild2", tree, root / "tfds")
    return str(tree), str(root / "tfds")


def _configs(demo_both_ways, **overrides):
    tree, tfds_dir = demo_both_ways
    common = dict(backbone="tiny", random_init=True, image_size=32, batch_size=8,
                  micro_batches=2, class_weights="auto", seed=3, eval_batch_size=16,
                  max_updates=2, validate_every=2, checkpoint_every=2, log_every=1,
                  lr_head=0.05, lr_backbone=0.05)
    common.update(overrides)
    return (train_config.TrainConfig(dataset="affwild2", data_dir=tree, **common),
            train_config.TrainConfig(dataset="tfds:affwild2", data_dir=tfds_dir, **common))


def _arrays(dataset):
    return [tuple(np.asarray(t) for t in batch) for batch in dataset.as_numpy_iterator()]


def _assert_same_batches(a, b):
    assert len(a) == len(b) and len(a) > 0
    for batch_a, batch_b in zip(a, b):
        for tensor_a, tensor_b in zip(batch_a, batch_b):
            np.testing.assert_array_equal(tensor_b, tensor_a)


@pytest.mark.parametrize("cache_images", [False, True])
def test_records_give_the_file_lists_batches(demo_both_ways, cache_images):
    """Same pixels, labels and class weights in the same order, in two epochs, after a
    resume skip, and in validation. Tolerance: none (the same JPEG bytes decoded)."""
    files, tfds = (training.make_loop_data(c) for c in _configs(
        demo_both_ways, cache_images=cache_images))
    assert files.images_per_epoch == tfds.images_per_epoch
    for epoch, skip in ((0, 0), (1, 0), (1, 3)):
        _assert_same_batches(_arrays(files.train_epoch(epoch, skip)),
                             _arrays(tfds.train_epoch(epoch, skip)))
    _assert_same_batches(_arrays(files.validation()), _arrays(tfds.validation()))
    weights = _arrays(tfds.train_epoch(0, 0))[0][2]
    assert len(set(weights.tolist())) > 1  # the class weights really differ per label


def test_fixed_validation_subset_is_the_same(demo_both_ways):
    files, tfds = (training.make_loop_data(c) for c in _configs(
        demo_both_ways, max_val_images=13))
    a, b = _arrays(files.validation()), _arrays(tfds.validation())
    assert sum(len(batch[1]) for batch in b) == 13
    _assert_same_batches(a, b)


def test_first_updates_are_identical(demo_both_ways, tmp_path):
    """Two updates from files and from records: the same weights. Tolerance: none (CPU)."""
    weights = []
    for config, name in zip(_configs(demo_both_ways), ("files", "records")):
        training.train_and_evaluate(config, str(tmp_path / name))
        checkpoint = training.tf.train.load_checkpoint(str(tmp_path / name / "checkpoints"))
        weights.append({key: checkpoint.get_tensor(key) for key in
                        checkpoint.get_variable_to_shape_map() if key.startswith("model/")})
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for key, value in weights[0].items():
        np.testing.assert_array_equal(weights[1][key], value, err_msg=key)


def test_records_split_metadata_and_errors(demo_both_ways, tmp_path):
    tree, tfds_dir = demo_both_ways
    split = records.load_split("tfds:affwild2", tfds_dir, "validation")
    assert len(split) == int(split.class_counts().sum()) > 0
    assert all(split.videos) and (split.frames >= 0).all()
    assert records.is_records("TFDS:expw") and not records.is_records("affwild2")
    with pytest.raises(FileNotFoundError, match="python -m fer_tf.data.prepare --dataset=expw"):
        records.load_split("tfds:expw", tfds_dir, "train")


def test_evaluate_reads_records_like_files(demo_both_ways, tmp_path):
    """fer_tf.evaluate on --dataset=tfds:affwild2 scores what the files score, and writes
    the same per-video CSVs. Tolerance: none (same decoded pixels, same model)."""
    tree, tfds_dir = demo_both_ways
    keras.utils.set_random_seed(5)
    model = model_lib.build_expression_model("tiny")
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 300.0, bias])  # predictions that vary with the image
    model.save(tmp_path / "tiny.keras")
    results = [evaluate.evaluate(str(tmp_path / "tiny.keras"), dataset, data_dir, "validation",
                                 smooth_window=3, output_dir=str(tmp_path / out))
               for dataset, data_dir, out in (("affwild2", tree, "files"),
                                              ("tfds:affwild2", tfds_dir, "records"))]
    for key in ("num_images", "raw", "smoothed"):
        assert results[1][key] == results[0][key], key
    np.testing.assert_array_equal(results[1]["probabilities"], results[0]["probabilities"])
    csvs = sorted(p.name for p in (tmp_path / "files" / "per_video").iterdir())
    assert csvs and csvs == sorted(p.name for p in (tmp_path / "records" / "per_video").iterdir())
    for name in csvs:
        assert (tmp_path / "records" / "per_video" / name).read_bytes() == \
            (tmp_path / "files" / "per_video" / name).read_bytes()


def test_record_shards_are_the_file_lists_shards(demo_both_ways):
    """Each of 2 workers' shards of the records equals its shard of the files, and the two
    shards' batch k, concatenated, is the unsharded batch k. Tolerance: none."""
    files, tfds = (training.make_loop_data(c) for c in _configs(demo_both_ways))
    whole = _arrays(tfds.train_epoch(1, 2))
    shards = []
    for index in range(2):
        shards.append(_arrays(tfds.train_epoch(1, 2, shard=(index, 2))))
        _assert_same_batches(_arrays(files.train_epoch(1, 2, shard=(index, 2))), shards[-1])
    joined = [tuple(np.concatenate([a[t], b[t]]) for t in range(3)) for a, b in zip(*shards)]
    _assert_same_batches(whole, joined)
