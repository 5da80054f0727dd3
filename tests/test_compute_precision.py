"""bfloat16 inference: where "auto" picks it, what computes in it, how close it stays."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import compute_precision, inference

_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 {}\nbogomips\t: 4792.81\n"


def _fake_cpu(tmp_path, monkeypatch, extra_flags):
    """Points `compute_precision` at a /proc/cpuinfo listing ``extra_flags``."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(_CPUINFO.format(extra_flags))
    monkeypatch.setattr(compute_precision, "_CPUINFO", str(cpuinfo))


@pytest.mark.parametrize("extra_flags, native", [
    ("avx512f avx512_bf16 avx512_vnni", True), ("amx_tile amx_bf16", True),
    ("avx512f avx512_vnni", False)])
def test_native_bfloat16_is_read_from_cpu_flags(extra_flags, native):
    assert compute_precision.cpu_has_native_bfloat16(_CPUINFO.format(extra_flags)) is native


def test_native_bfloat16_is_unknown_without_flags():
    assert compute_precision.cpu_has_native_bfloat16("processor\t: 0\nCPU implementer\t: 0x41\n") is None


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="auto is float32 on GPUs")
@pytest.mark.parametrize("extra_flags, expected", [
    ("avx512f avx512_bf16", "bfloat16"), ("avx512f avx512_vnni", "float32")])
def test_auto_follows_the_cpu_flags(tmp_path, monkeypatch, extra_flags, expected):
    _fake_cpu(tmp_path, monkeypatch, extra_flags)
    assert compute_precision.resolve("auto") == expected
    monkeypatch.setattr(compute_precision, "_CPUINFO", str(tmp_path / "missing"))
    assert compute_precision.resolve("auto") == "float32"


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="auto is float32 on GPUs")
@pytest.mark.parametrize("extra_flags, expected", [
    ("avx512f avx512_bf16", "mixed_bfloat16"), ("amx_bf16 amx_tile", "mixed_bfloat16"),
    ("avx512f avx512_vnni", "float32")])
def test_training_auto_is_mixed_bfloat16_only_where_native(tmp_path, monkeypatch, extra_flags,
                                                           expected):
    _fake_cpu(tmp_path, monkeypatch, extra_flags)
    assert compute_precision.training_policy("auto") == expected
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert compute_precision.training_policy(policy) == policy


def test_explicit_precisions_pass_and_others_fail():
    assert compute_precision.resolve("float32") == "float32"
    assert compute_precision.resolve("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="float16.*auto, float32, bfloat16"):
        compute_precision.resolve("float16")


def test_only_the_backbone_computes_in_bfloat16(contract_model_file):
    _, model = contract_model_file
    copy = compute_precision.backbone_in_bfloat16(model)
    backbone = copy.get_layer("backbone")
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    computing = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in computing)
    for name in ("preprocessing", "head"):
        assert copy.get_layer(name).compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in copy.weights)
    for original, copied in zip(model.weights, copy.weights):
        np.testing.assert_array_equal(original.numpy(), copied.numpy())
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3)), tf.float32)
    assert copy(images, training=False).dtype == tf.float32


@pytest.mark.parametrize("extra_flags, pool", [
    ("avx512f avx512_bf16", keras.layers.AveragePooling2D),
    ("avx512f avx512_vnni", keras.layers.GlobalAveragePooling2D)])
def test_the_bfloat16_squeeze_pools_in_bfloat16_only_where_native(
        contract_model_file, tmp_path, monkeypatch, extra_flags, pool):
    _fake_cpu(tmp_path, monkeypatch, extra_flags)
    backbone = compute_precision.backbone_in_bfloat16(contract_model_file[1]).get_layer("backbone")
    squeezes = [layer for layer in backbone.layers if layer.name.endswith("_squeeze")]
    assert squeezes and all(type(layer) is pool for layer in squeezes)


def test_the_bfloat16_squeeze_is_the_float32_mean_rounded_once(contract_model_file):
    # Whichever pool this machine's CPU gets (the test above), the same mean.
    _, model = contract_model_file
    backbone = compute_precision.backbone_in_bfloat16(model).get_layer("backbone")
    squeeze = backbone.get_layer("layer1_0_squeeze")
    maps = tf.cast(tf.random.stateless_uniform((2, 24, 24, 64), (1, 2), 0.0, 3.0), tf.bfloat16)
    pooled = squeeze(maps)
    assert pooled.shape == (2, 1, 1, 64) and pooled.dtype == tf.bfloat16
    mean = tf.reduce_mean(tf.cast(maps, tf.float32), axis=(1, 2), keepdims=True).numpy()
    # One rounding to bfloat16's 8 significant bits: relative error at most 2**-8.
    np.testing.assert_allclose(tf.cast(pooled, tf.float32).numpy(), mean, rtol=2.0**-8, atol=0)


def _fer2013_faces(fer2013_dir, count=64):
    """Real 48x48 faces (FER2013 PublicTest, the happy folder)."""
    import cv2  # pylint: disable=import-outside-toplevel
    folder = os.path.join(fer2013_dir, "test", "happy")
    names = sorted(os.listdir(folder))[:count]
    return np.stack([cv2.cvtColor(cv2.imread(os.path.join(folder, n)), cv2.COLOR_BGR2RGB)
                     for n in names])


def test_shipped_model_in_bfloat16_stays_close_on_real_faces(fer2013_dir):
    faces = _fer2013_faces(fer2013_dir)
    exact = inference.load_classifier(None, precision="float32")
    fast = inference.load_classifier(None, precision="bfloat16")
    assert (exact.precision, fast.precision) == ("float32", "bfloat16")
    p32, p16 = exact.predict_probabilities(faces), fast.predict_probabilities(faces)
    # bfloat16 keeps 8 significant bits: probabilities move by a few hundredths at most
    # (tolerance 0.05), and nearly every face keeps its label.
    assert np.abs(p32 - p16).max() < 0.05
    assert np.mean(p32.argmax(1) == p16.argmax(1)) >= 0.95
    assert np.abs(p32 - p16).max() > 0  # it did compute differently


def test_bfloat16_is_refused_for_a_saved_model(tmp_path):
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def predict_images(images):
        return {"probabilities": tf.ones([tf.shape(images)[0], 7]) / 7}

    tf.saved_model.save(module, str(tmp_path / "export"), signatures={"predict_images": predict_images})
    with pytest.raises(ValueError, match="bfloat16 applies to .keras models"):
        inference.load_classifier(tmp_path / "export", precision="bfloat16")
    assert inference.load_classifier(tmp_path / "export").precision == "float32"

