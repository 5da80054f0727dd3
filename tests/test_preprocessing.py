"""The shared preprocessing: resize to the network size, BGR minus the VGGFace2 mean."""

import numpy as np
import tensorflow as tf

from fer_tf import preprocessing


def test_network_input_is_bgr_minus_vggface2_mean():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    out = preprocessing.preprocess(rgb).numpy()
    expected = rgb[..., ::-1].astype(np.float32) - np.array([91.4953, 103.8827, 131.0912], np.float32)
    np.testing.assert_array_equal(out, expected)


def test_resize_is_identity_at_target_size_even_with_unknown_static_shape():
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    dynamic = tf.function(
        lambda t: preprocessing.resize(t, 64),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
    )
    np.testing.assert_array_equal(dynamic(x).numpy(), x)


def test_resize_upsamples_bilinearly_with_half_pixel_centres():
    # A horizontal ramp 0..3 upsampled 4 -> 8: half-pixel bilinear gives
    # 0, 0.25, 0.75, 1.25, ..., clamped at the ends.
    ramp = np.tile(np.arange(4, dtype=np.float32)[None, :, None], (4, 1, 3))[None]
    out = preprocessing.resize(ramp, 8).numpy()[0, 0, :, 0]
    np.testing.assert_allclose(out, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    assert preprocessing.resize(np.zeros((5, 7, 3), np.uint8), 224).shape == (224, 224, 3)
