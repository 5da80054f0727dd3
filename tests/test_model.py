"""The expression model: any input size, head/backbone split, PyTorch head init, save/load."""

import math

import numpy as np
import pytest

from fer_tf import model as model_lib
from fer_tf.data import preprocessing


@pytest.fixture(scope="module")
def tiny():
    return model_lib.build_expression_model("tiny")


def test_accepts_any_image_size_and_gives_seven_logits(tiny):
    for size in (48, 64, 112):
        x = np.random.default_rng(size).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
        assert tiny.predict(x, verbose=0).shape == (3, 7)


def test_model_equals_backbone_on_preprocessed_input(tiny):
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    backbone = tiny.get_layer("backbone")
    head = tiny.get_layer("head")
    manual = head(backbone(preprocessing.preprocess(x, 64))).numpy()
    np.testing.assert_allclose(tiny(x).numpy(), manual, rtol=1e-6, atol=1e-6)


def test_head_and_backbone_variables_partition_the_trainable_set(tiny):
    head = model_lib.head_variables(tiny)
    backbone = model_lib.backbone_variables(tiny)
    assert [tuple(v.shape) for v in head] == [(512, 7), (7,)]  # 4 stages: 16 * 8 * 4 features
    assert len(head) + len(backbone) == len(tiny.trainable_variables)
    assert not {id(v) for v in head} & {id(v) for v in backbone}


def test_head_uses_pytorch_linear_init_bounds(tiny):
    bound = 1 / math.sqrt(512)
    kernel, bias = (v.numpy() for v in model_lib.head_variables(tiny))
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert np.abs(kernel).max() > 0.8 * bound  # uniform over the whole range, not a narrower init


def test_save_and_reload_give_identical_outputs(tiny, tmp_path):
    path = tmp_path / "m.keras"
    tiny.save(path)
    reloaded = model_lib.load_expression_model(path)
    x = np.random.default_rng(2).uniform(0, 255, (2, 80, 80, 3)).astype(np.float32)
    np.testing.assert_array_equal(tiny.predict(x, verbose=0), reloaded.predict(x, verbose=0))


def test_unknown_backbone_and_missing_weights_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"):
        model_lib.build_expression_model("resnet9000")
    with pytest.raises(FileNotFoundError, match="python -m weights_conversion"):
        model_lib.build_expression_model("tiny", backbone_weights=str(tmp_path / "none.weights.h5"))


def test_augmentation_runs_only_in_training_and_survives_save(tmp_path):
    augmented = model_lib.build_expression_model("tiny", augment=True, seed=3)
    x = np.random.default_rng(4).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    inference = augmented(x, training=False).numpy()
    # Inference is the plain preprocessing path: equal to the backbone on preprocessed input.
    manual = augmented.get_layer("head")(
        augmented.get_layer("backbone")(preprocessing.preprocess(x, 64))).numpy()
    np.testing.assert_allclose(inference, manual, rtol=1e-6, atol=1e-6)
    first, second = (augmented.get_layer("preprocessing")(x, training=True).numpy() for _ in range(2))
    assert not np.allclose(first, second)  # new random flip/jitter draws per call
    augmented.save(tmp_path / "aug.keras")
    reloaded = model_lib.load_expression_model(tmp_path / "aug.keras")
    np.testing.assert_array_equal(reloaded(x, training=False).numpy(), inference)
