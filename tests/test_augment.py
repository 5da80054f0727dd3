"""fer_tf.augment against torchvision: a numpy reference and recorded golden outputs.

Tolerance: 2e-6 absolute on [0, 1] values (float32 summation order in the
contrast mean and HSV round trips; measured max difference ~8e-7).
"""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import augment

ATOL = 2e-6
GOLDEN = pathlib.Path(__file__).resolve().parent / "data" / "golden" / "color_jitter.npz"


# ---------------------------------------------------------------- numpy reference
# Written from torchvision/transforms/v2/functional/_color.py (tensor kernels).

def np_gray(x):
    return (0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def np_brightness(x, f):
    return np.clip(x * f, 0, 1)


def np_contrast(x, f):
    return np.clip(f * x + (1 - f) * np_gray(x).mean(), 0, 1)


def np_saturation(x, f):
    return np.clip(f * x + (1 - f) * np_gray(x), 0, 1)


def np_hue(x, f):
    x = x.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = x.max(-1), x.min(-1)
    eq = maxc == minc
    rng = maxc - minc
    s = rng / np.where(eq, 1.0, maxc)
    div = np.where(eq, 1.0, rng)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.mod(np.mod(h / 6.0 + 1.0, 1.0) + f, 1.0)
    i = np.floor(h * 6.0)
    fr = h * 6.0 - i
    i = i.astype(int) % 6
    v = maxc
    p = np.clip(v * (1 - s), 0, 1)
    q = np.clip(v * (1 - s * fr), 0, 1)
    t = np.clip(v * (1 - s * (1 - fr)), 0, 1)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros_like(x)
    for k, chans in enumerate(table):
        for c in range(3):
            out[..., c] = np.where(i == k, chans[c], out[..., c])
    return out


NP_OPS = (np_brightness, np_contrast, np_saturation, np_hue)


def np_jitter(x, factors, order):
    for op in order:
        x = NP_OPS[op](x, factors[op])
    return x


def _random_images(n=6, h=10, w=14, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, h, w, 3)).astype(np.float32)
    x[0, :, :, 1:] = x[0, :, :, :1]  # gray pixels: maxc == minc
    x[1] = np.round(x[1])  # 0/1 only: channel ties and clamping
    return x


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


def test_numpy_reference_matches_recorded_torchvision(golden):
    # Guards the reference itself: it must agree with real torchvision.
    x, f, o = golden["images"], golden["factors"], golden["orders"]
    for k, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        ref = np.stack([NP_OPS[k](x[i], f[i, k]) for i in range(len(x))])
        np.testing.assert_allclose(ref, golden[f"v2_{name}"], atol=ATOL, err_msg=name)
    ref = np.stack([np_jitter(x[i], f[i], o[i]) for i in range(len(x))])
    np.testing.assert_allclose(ref, golden["jitter_v2"], atol=ATOL)


@pytest.mark.parametrize("k,name", enumerate(("brightness", "contrast", "saturation", "hue")))
def test_single_ops_match_torchvision(golden, k, name):
    x, f = golden["images"], golden["factors"]
    out = getattr(augment, f"adjust_{name}")(x, f[:, k]).numpy()
    # v1 (transforms.functional) and v2 kernels were both recorded; match both.
    np.testing.assert_allclose(out, golden[f"v2_{name}"], atol=ATOL)
    np.testing.assert_allclose(out, golden[f"v1_{name}"], atol=ATOL)


def test_color_jitter_with_orders_matches_torchvision(golden):
    x, f, o = golden["images"], golden["factors"], golden["orders"]
    out = augment.color_jitter(x, f[:, 0], f[:, 1], f[:, 2], f[:, 3], orders=o).numpy()
    np.testing.assert_allclose(out, golden["jitter_v2"], atol=ATOL)
    np.testing.assert_allclose(out, golden["jitter_v1"], atol=ATOL)


def test_color_jitter_matches_the_torchvision_module(golden):
    # Factors and fn_idx drawn by v2.ColorJitter(0.4, 0.3, 0.25, 0.5) itself.
    x, f, o = golden["images"], golden["module_factors"], golden["module_orders"]
    out = augment.color_jitter(x, f[:, 0], f[:, 1], f[:, 2], f[:, 3], orders=o).numpy()
    np.testing.assert_allclose(out, golden["module_output"], atol=ATOL)


def test_order_matters_and_every_order_matches_numpy():
    x = _random_images(n=24)
    rng = np.random.default_rng(3)
    factors = np.stack([rng.uniform(0.6, 1.4, 24), rng.uniform(0.7, 1.3, 24),
                        rng.uniform(0.75, 1.25, 24), rng.uniform(-0.5, 0.5, 24)], 1)
    factors = factors.astype(np.float32)
    import itertools
    orders = np.array(list(itertools.permutations(range(4))), np.int32)  # all 24
    out = augment.color_jitter(x, *factors.T, orders=orders).numpy()
    ref = np.stack([np_jitter(x[i], factors[i], orders[i]) for i in range(24)])
    np.testing.assert_allclose(out, ref, atol=ATOL)
    same_order = augment.color_jitter(x, *factors.T).numpy()
    assert np.abs(same_order - out).max() > 1e-2  # the order is honoured, not ignored


def test_disabled_ops_are_left_out():
    x = _random_images()
    f = np.full(len(x), 1.3, np.float32)
    out = augment.color_jitter(x, brightness_factors=f).numpy()
    np.testing.assert_allclose(out, np.clip(x * 1.3, 0, 1), atol=ATOL)
    np.testing.assert_array_equal(augment.color_jitter(x).numpy(), x)


def test_random_factors_in_range_and_per_image():
    p = augment.sample_jitter_params(tf.constant([4, 2]), 512)
    for name, (lo, hi) in {"brightness_factors": (0.6, 1.4), "contrast_factors": (0.7, 1.3),
                           "saturation_factors": (0.75, 1.25),
                           "hue_factors": (-0.5, 0.5)}.items():
        v = p[name].numpy()
        assert v.min() >= lo and v.max() <= hi, name
        # Spread over the range: per-image draws, not one factor for the batch.
        assert v.min() < lo + 0.05 * (hi - lo) and v.max() > hi - 0.05 * (hi - lo), name
        assert len(np.unique(v)) > 500, name
    orders = p["orders"].numpy()
    np.testing.assert_array_equal(np.sort(orders, axis=1), np.tile(np.arange(4), (512, 1)))
    assert len({tuple(r) for r in orders}) == 24  # all permutations occur


def test_zero_arguments_disable_ops_and_bad_arguments_raise():
    p = augment.sample_jitter_params(tf.constant([0, 1]), 4, brightness=0, hue=0)
    assert p["brightness_factors"] is None and p["hue_factors"] is None
    with pytest.raises(ValueError, match="hue"):
        augment.sample_jitter_params(tf.constant([0, 1]), 4, hue=0.6)
    with pytest.raises(ValueError, match="contrast"):
        augment.FaceAugmentation(contrast=-1)


def test_random_flip_and_jitter_is_seeded_and_per_image():
    x = tf.constant(_random_images(n=16))
    a = augment.random_flip_and_jitter(x, tf.constant([7, 1])).numpy()
    b = augment.random_flip_and_jitter(x, tf.constant([7, 1])).numpy()
    c = augment.random_flip_and_jitter(x, tf.constant([7, 2])).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2
    assert a.min() >= 0 and a.max() <= 1


def test_flip_is_per_image_and_exact():
    x = tf.constant(_random_images(n=64))
    out = augment.random_flip(x, tf.constant([1, 1])).numpy()
    flipped = [np.array_equal(out[i], x[i, :, ::-1].numpy()) for i in range(64)]
    kept = [np.array_equal(out[i], x[i].numpy()) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_same_result_in_tf_function_xla_and_tf_data():
    x = _random_images(n=8)
    seed = tf.constant([3, 9], tf.int64)
    eager = augment.random_flip_and_jitter(x, seed).numpy()
    graph = tf.function(augment.random_flip_and_jitter)(x, seed).numpy()
    xla = tf.function(augment.random_flip_and_jitter, jit_compile=True)(x, seed).numpy()
    ds = tf.data.Dataset.from_tensors(x).map(lambda b: augment.random_flip_and_jitter(b, seed))
    data = next(iter(ds)).numpy()
    np.testing.assert_allclose(graph, eager, atol=ATOL)
    np.testing.assert_allclose(xla, eager, atol=ATOL)
    np.testing.assert_allclose(data, eager, atol=ATOL)


def test_face_augmentation_layer_in_a_model():
    layer = augment.FaceAugmentation(seed=5)
    x = (_random_images(n=4) * 255).round().astype(np.uint8)
    inference = layer(x, training=False).numpy()
    np.testing.assert_array_equal(inference, x.astype(np.float32))
    first = layer(x, training=True).numpy()
    second = layer(x, training=True).numpy()
    assert first.min() >= 0 and first.max() <= 255 and first.dtype == np.float32
    assert np.abs(first - second).max() > 1  # the seed state advances per call

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, augment.FaceAugmentation(seed=5, name="augment")(inputs))
    np.testing.assert_array_equal(model(x, training=False).numpy(), x.astype(np.float32))
    # Same seed -> the same first draw as the standalone layer, also inside a model.
    np.testing.assert_allclose(model(x, training=True).numpy(), first, atol=255 * ATOL)
    clone = augment.FaceAugmentation.from_config(layer.get_config())
    assert clone.get_config()["hue"] == 0.5 and clone.seed == 5
    # The random state is a non-trainable weight, so checkpoints resume the sequence.
    assert any("seed" in v.path for v in layer.non_trainable_variables)


def test_jit_compiled_layer_trains_in_fit_and_matches_the_plain_layer():
    x = (_random_images(n=8, h=16, w=16) * 255).round().astype(np.float32)
    plain = augment.FaceAugmentation(seed=2)(x, training=True).numpy()
    layer = augment.FaceAugmentation(seed=2, jit_compile=True)
    np.testing.assert_allclose(layer(x, training=True).numpy(), plain, atol=255 * ATOL)
    assert augment.FaceAugmentation.from_config(layer.get_config()).jit_compile

    inputs = keras.Input((16, 16, 3))
    features = keras.layers.GlobalAveragePooling2D()(
        augment.FaceAugmentation(seed=2, jit_compile=True)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(7)(features))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, np.arange(8) % 7, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# ---------------------------------------------------------------- affine jitter, erasing

def _one(value, n=1):
    return tf.constant([value] * n, tf.float32)


def test_affine_warp_quarter_turn_and_integer_shift_are_exact():
    x = _random_images(n=2, h=9, w=9)
    # A quarter turn maps the pixel grid onto itself: np.rot90 clockwise (1e-5: cos(pi/2)
    # is -4e-8 in float32, a sub-pixel offset of that size).
    turned = augment.affine_warp(x, _one(1.0, 2), _one(np.pi / 2, 2), _one(0.0, 2), _one(0.0, 2))
    np.testing.assert_allclose(turned.numpy(), np.rot90(x, k=-1, axes=(1, 2)), atol=1e-5)
    # Shift right by 2, down by 1: edge pixels repeat (exact).
    shifted = augment.affine_warp(x, _one(1.0, 2), _one(0.0, 2), _one(2.0, 2), _one(1.0, 2)).numpy()
    expected = np.pad(x, ((0, 0), (1, 0), (2, 0), (0, 0)), mode="edge")[:, :9, :9]
    np.testing.assert_array_equal(shifted, expected)


def test_affine_warp_matches_opencv_warp_affine():
    import cv2  # pylint: disable=import-outside-toplevel

    x = _random_images(n=2, h=20, w=20)[1:]
    scale, angle, tx, ty = 1.1, 0.2, 1.5, -2.25
    out = augment.affine_warp(x, _one(scale), _one(angle), _one(tx), _one(ty)).numpy()[0]
    c = 9.5
    a = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) / scale
    # Inverse map (output -> input), as affine_warp defines it.
    m = np.concatenate([a, (np.array([c, c]) - a @ np.array([c, c]) - [tx, ty])[:, None]], 1)
    ref = cv2.warpAffine(x[0], m, (20, 20), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    # 2e-2: OpenCV interpolates with 5-bit fixed-point weights (1/32 steps).
    np.testing.assert_allclose(out, ref, atol=2e-2)


def test_random_affine_is_seeded_bounded_and_off_at_zero():
    x = tf.constant(_random_images(n=8, h=16, w=16))
    np.testing.assert_array_equal(augment.random_affine(x, tf.constant([1, 2])).numpy(), x.numpy())
    a = augment.random_affine(x, tf.constant([1, 2]), 0.1, 0.1, 10).numpy()
    b = augment.random_affine(x, tf.constant([1, 2]), 0.1, 0.1, 10).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - x.numpy()).max() > 0.05
    assert a.min() >= x.numpy().min() - 1e-6 and a.max() <= x.numpy().max() + 1e-6


def test_random_erasing_paints_one_rectangle_of_the_mean_colour():
    x = tf.constant(_random_images(n=32, h=24, w=24))
    np.testing.assert_array_equal(augment.random_erasing(x, tf.constant([0, 5])).numpy(), x.numpy())
    out = augment.random_erasing(x, tf.constant([0, 5]), probability=1.0).numpy()
    fill = np.array(augment.ERASING_FILL_RGB, np.float32)
    for image, original in zip(out, x.numpy()):
        erased = np.all(image != original, axis=-1)
        rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
        assert erased.sum() == len(rows) * len(cols)  # one full rectangle
        assert np.ptp(rows) + 1 == len(rows) and np.ptp(cols) + 1 == len(cols)
        np.testing.assert_array_equal(image[erased], np.broadcast_to(fill, image[erased].shape))
        assert 0.005 <= erased.mean() <= augment.ERASING_AREA[1] + 0.05
    half = augment.random_erasing(x, tf.constant([0, 6]), probability=0.5).numpy()
    touched = np.any(half != x.numpy(), axis=(1, 2, 3)).sum()
    assert 6 <= touched <= 26


def test_layer_with_extras_round_trips_its_config_and_rejects_bad_values():
    layer = augment.FaceAugmentation(seed=1, shift=0.1, scale=0.1, rotation=10, erasing=0.5)
    clone = augment.FaceAugmentation.from_config(layer.get_config())
    assert (clone.shift, clone.scale, clone.rotation, clone.erasing) == (0.1, 0.1, 10, 0.5)
    x = (_random_images(n=4, h=16, w=16) * 255).astype(np.float32)
    out = layer(x, training=True).numpy()
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 255
    with pytest.raises(ValueError, match="erasing"):
        augment.FaceAugmentation(erasing=1.5)
    with pytest.raises(ValueError, match="shift"):
        augment.FaceAugmentation(shift=-0.1)
