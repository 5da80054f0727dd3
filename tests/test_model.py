"""The expression model: any input size, head/backbone split, PyTorch head init, save/load."""

import math

import keras
import numpy as np
import pytest

from fer_tf import model as model_lib, optim
from fer_tf import preprocessing


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


def test_the_optimiser_groups_only_the_head_at_lr_head(tiny):
    # optim.head_mask decides which variables train at lr_head: exactly the head's two.
    mask = optim.head_mask(tiny)
    head = [v for v, is_head in zip(tiny.trainable_variables, mask) if is_head]
    assert [tuple(v.shape) for v in head] == [(512, 7), (7,)]  # 4 stages: 16 * 8 * 4 features
    assert len(mask) == len(tiny.trainable_variables) and sum(mask) == 2


def test_head_uses_pytorch_linear_init_bounds(tiny):
    bound = 1 / math.sqrt(512)
    kernel, bias = (v.numpy() for v in tiny.get_layer("head").trainable_variables)
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


@pytest.mark.parametrize("name, first_stage", [("fer48_w16", 24), ("fer48_s4_w16", 12)])
def test_fer48_backbones_keep_their_first_stage_resolution(name, first_stage):
    model = model_lib.build_backbone(name)
    assert model.input_shape[1:3] == (48, 48)
    assert model.get_layer("layer1_0_add").output.shape[1:3] == (first_stage, first_stage)
    assert model.get_layer("layer4_0_add").output.shape[1] == math.ceil(first_stage / 8)


def test_compact_stem_refuses_vggface2_weights(tmp_path):
    from fer_tf import senet  # pylint: disable=import-outside-toplevel

    with pytest.raises(ValueError, match="'vggface2' stem only"):
        senet.se_resnet((1, 1, 1, 1), 16, weights=str(tmp_path / "w.weights.h5"),
                        input_shape=(48, 48, 3), stem="3x3")
    with pytest.raises(ValueError, match="unknown stem"):
        senet.se_resnet((1, 1, 1, 1), 16, input_shape=(48, 48, 3), stem="5x5")


def test_grayscale_model_sees_colour_as_its_gray_version():
    from fer_tf import augment  # pylint: disable=import-outside-toplevel

    model = model_lib.build_expression_model("fer48_w16", grayscale=True)
    colour_model = model_lib.build_expression_model("fer48_w16", grayscale=False)
    colour_model.set_weights(model.get_weights())
    colour = np.random.default_rng(1).uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    gray = np.repeat(augment.rgb_to_grayscale(colour).numpy(), 3, axis=-1)
    # The gray model on colour = the plain model on the gray image (1e-5: float32 rounding).
    np.testing.assert_allclose(model(colour).numpy(), colour_model(gray).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert np.abs(colour_model(colour).numpy() - model(colour).numpy()).max() > 1e-4


def test_input_contract_travels_in_the_model_file(tmp_path):
    model = model_lib.build_expression_model(
        "fer48_w16", decode_size=48, grayscale=True, crop_margin=0.05,
        class_names=("a", "b", "c", "d", "e", "f", "g"))
    path = tmp_path / "m.keras"
    model.save(path)
    contract = model_lib.input_contract(model_lib.load_expression_model(path))
    assert contract == model_lib.InputContract(48, True, ("a", "b", "c", "d", "e", "f", "g"), 0.05)
    old = model_lib.input_contract(model_lib.build_expression_model("tiny"))
    assert old.decode_size is None and old.crop_margin is None and not old.grayscale


def test_center_crop_feeds_the_backbone_the_central_square_and_travels_in_the_file(tmp_path):
    # Shift jitter only (no flip, no ColorJitter), so training differs from inference by
    # where the crop lands.
    shift_only = {"shift": 0.1, "flip": False, "brightness": 0, "contrast": 0, "saturation": 0,
                  "hue": 0}
    model = model_lib.build_expression_model("fer48_w16", augment=True, seed=1, center_crop=40,
                                             augment_options=shift_only)
    assert model.get_layer("backbone").input_shape[1:3] == (40, 40)
    x = np.random.default_rng(5).uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    # Inference: exactly the backbone on the central 40x40 pixels (offset 4 on each side).
    manual = model.get_layer("head")(model.get_layer("backbone")(
        preprocessing.rgb_to_network_input(x[:, 4:44, 4:44, :]))).numpy()
    np.testing.assert_allclose(model(x).numpy(), manual, rtol=1e-6, atol=1e-6)
    # Training: 40x40 crops at shifted positions, not the central square.
    face = model.get_layer("preprocessing")
    central = face(x, training=False).numpy()
    shifted = face(x, training=True).numpy()
    assert shifted.shape == central.shape == (2, 40, 40, 3)
    assert np.abs(shifted - central).max() > 1.0
    model.save(tmp_path / "crop.keras")
    reloaded = model_lib.load_expression_model(tmp_path / "crop.keras")
    assert reloaded.get_layer("preprocessing").center_crop == 40
    np.testing.assert_array_equal(reloaded(x).numpy(), model(x).numpy())
    with pytest.raises(ValueError, match="center_crop=56 must be in 1..48"):
        model_lib.build_expression_model("fer48_w16", center_crop=56)


def test_center_crop_rounds_offsets_like_torchvision():
    images = np.arange(2 * 7 * 6 * 1, dtype=np.float32).reshape(2, 7, 6, 1)
    # torchvision's center_crop: top = round((7 - 4) / 2) = 2 (Python's round), left = 1.
    np.testing.assert_array_equal(preprocessing.center_crop(images, 4), images[:, 2:6, 1:5])
    with pytest.raises(ValueError, match="larger than the 7x6 images"):
        preprocessing.center_crop(images, 7)


def test_zero_init_last_starts_every_residual_branch_at_zero():
    """Only the bn3 scales change (to 0), so each block without a projection passes its
    input through unchanged (its input is post-ReLU, so relu(x + 0) = x). Tolerance: none
    for the weights (same seed), 0 for the identity (the branch adds exact zeros)."""
    keras.utils.set_random_seed(3)
    plain = model_lib.build_expression_model("fer48_w16x2")
    keras.utils.set_random_seed(3)
    zeroed = model_lib.build_expression_model("fer48_w16x2", zero_init_last=True)
    changed = []
    for a, b in zip(plain.weights, zeroed.weights):
        if not np.array_equal(a.numpy(), b.numpy()):
            changed.append(b.path)
            assert b.path.endswith("_bn3/gamma") and not b.numpy().any(), b.path
    assert len(changed) == 8  # 2 blocks x 4 stages
    backbone = zeroed.get_layer("backbone")
    probe = keras.Model(backbone.input, [backbone.get_layer(f"layer{s}_{i}_relu").output
                                         for s in (1, 2, 3, 4) for i in (0, 1)])
    images = np.random.default_rng(0).normal(0, 50, (2, 48, 48, 3)).astype(np.float32)
    outputs = probe(images)
    for first, second in zip(outputs[0::2], outputs[1::2]):
        np.testing.assert_array_equal(second.numpy(), first.numpy())
    with pytest.raises(ValueError, match="zero_init_last would overwrite"):
        model_lib.build_expression_model("tiny", backbone_weights=__file__, zero_init_last=True)
