"""The paper's augmentation with torchvision's exact semantics, batched, per image.

RandomHorizontalFlip(p=0.5) + ColorJitter(brightness=0.4, contrast=0.3,
saturation=0.25, hue=0.5) as torchvision's *tensor* kernels compute them
(torchvision/transforms/v2/functional/_color.py), on float RGB images in [0, 1]
of shape [B, H, W, 3], with one set of factors and one op order per image:

- brightness: ``clamp(x * b)``;
- contrast: ``clamp(c * x + (1 - c) * mean(gray(x)))``, one scalar mean per image;
- saturation: ``clamp(s * x + (1 - s) * gray(x))``, per-pixel grayscale;
- hue: RGB -> HSV, ``h = (h + hue) mod 1``, HSV -> RGB (torchvision's formulas);
- ``gray = 0.2989 R + 0.587 G + 0.114 B`` (torchvision's weights, not 0.299);
- the four ops run in a random order per image (torch.randperm(4) over
  0 brightness, 1 contrast, 2 saturation, 3 hue).

Everything is pure TensorFlow without data-dependent shapes, so it runs eagerly,
inside tf.function / XLA, in a tf.data map and inside a Keras layer. Randomness
is stateless (a [2] int seed tensor): the same seed gives the same output, which
makes training reproducible and resumable, with or without XLA.
"""

import keras
import tensorflow as tf

# torchvision ColorJitter op ids (order of its fn_idx permutation).
OP_BRIGHTNESS, OP_CONTRAST, OP_SATURATION, OP_HUE = 0, 1, 2, 3
NUM_OPS = 4

# torchvision _rgb_to_grayscale_image weights (ITU-R 601-2 with 0.2989).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# The paper's ColorJitter arguments.
PAPER_BRIGHTNESS, PAPER_CONTRAST, PAPER_SATURATION, PAPER_HUE = 0.4, 0.3, 0.25, 0.5

_MASK32 = 0xFFFFFFFF


def rgb_to_grayscale(images):
    """torchvision's grayscale of RGB images [..., H, W, 3] -> [..., H, W, 1]."""
    r, g, b = tf.unstack(images, axis=-1)
    gray = r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]
    return gray[..., None]


def _per_image(factors, images):
    """[B] factors -> [B, 1, 1, 1] float32 to broadcast against [B, H, W, C]."""
    return tf.reshape(tf.cast(factors, images.dtype), [-1, 1, 1, 1])


def _blend(images, other, ratio):
    """torchvision _blend: clamp(ratio * a + (1 - ratio) * b) to [0, 1]."""
    return tf.clip_by_value(ratio * images + (1.0 - ratio) * other, 0.0, 1.0)


def adjust_brightness(images, factors):
    """Multiplies each image by its factor and clamps to [0, 1]."""
    images = tf.convert_to_tensor(images, tf.float32)
    return tf.clip_by_value(images * _per_image(factors, images), 0.0, 1.0)


def adjust_contrast(images, factors):
    """Blends each image with the scalar mean of its own grayscale."""
    images = tf.convert_to_tensor(images, tf.float32)
    mean = tf.reduce_mean(rgb_to_grayscale(images), axis=[-3, -2, -1], keepdims=True)
    return _blend(images, mean, _per_image(factors, images))


def adjust_saturation(images, factors):
    """Blends each image with its per-pixel grayscale."""
    images = tf.convert_to_tensor(images, tf.float32)
    return _blend(images, rgb_to_grayscale(images), _per_image(factors, images))


def _rgb_to_hsv(images):
    """torchvision _rgb_to_hsv on channels-last images; h in [0, 1)."""
    r, g, b = tf.unstack(images, axis=-1)
    # torchvision tests maxc == r / maxc == g by value. XLA may recompute r, g, b
    # inside different fusions with different rounding, so equality against a
    # separately reduced max can fail; comparing the channels with each other
    # picks the same branch (ties go to r, then g, as in torchvision) robustly.
    r_is_max = tf.logical_and(r >= g, r >= b)
    g_is_max = tf.logical_and(tf.logical_not(r_is_max), g >= b)
    b_is_max = tf.logical_not(tf.logical_or(r_is_max, g_is_max))
    maxc = tf.where(r_is_max, r, tf.where(g_is_max, g, b))
    minc = tf.minimum(tf.minimum(r, g), b)
    eqc = tf.equal(maxc, minc)
    channels_range = maxc - minc
    ones = tf.ones_like(maxc)
    s = channels_range / tf.where(eqc, ones, maxc)
    divisor = tf.where(eqc, ones, channels_range)
    rc = (maxc - r) / divisor
    gc = (maxc - g) / divisor
    bc = (maxc - b) / divisor
    zero = tf.zeros_like(maxc)
    hr = tf.where(r_is_max, bc - gc, zero)
    hg = tf.where(g_is_max, rc + 2.0 - bc, zero)
    hb = tf.where(b_is_max, gc + 4.0 - rc, zero)
    h = hr + hg + hb
    h = tf.math.floormod(h * (1.0 / 6.0) + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h, s, v):
    """torchvision _hsv_to_rgb -> channels-last RGB."""
    h6 = h * 6.0
    i = tf.floor(h6)
    f = h6 - i
    i = tf.math.floormod(tf.cast(i, tf.int32), 6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = tf.clip_by_value((1.0 - sxf) * v, 0.0, 1.0)
    t = tf.clip_by_value((sxf + one_minus_s) * v, 0.0, 1.0)
    p = tf.clip_by_value(one_minus_s * v, 0.0, 1.0)
    # torchvision selects (v, p, q, t) per channel by i with a gather table; the same
    # selection as elementwise where-chains is bit-identical and XLA fuses it.
    r = tf.where((i == 0) | (i == 5), v, tf.where(i == 1, q, tf.where(i == 4, t, p)))
    g = tf.where((i == 1) | (i == 2), v, tf.where(i == 0, t, tf.where(i == 3, q, p)))
    b = tf.where((i == 3) | (i == 4), v, tf.where(i == 2, t, tf.where(i == 5, q, p)))
    return tf.stack([r, g, b], axis=-1)


def adjust_hue(images, factors):
    """Rotates each image's hue by its factor (fraction of the circle, in [-0.5, 0.5])."""
    images = tf.convert_to_tensor(images, tf.float32)
    h, s, v = _rgb_to_hsv(images)
    h = tf.math.floormod(h + tf.reshape(tf.cast(factors, tf.float32), [-1, 1, 1]), 1.0)
    return _hsv_to_rgb(h, s, v)


def color_jitter(images, brightness_factors=None, contrast_factors=None,
                 saturation_factors=None, hue_factors=None, orders=None):
    """ColorJitter with explicit per-image factors and op orders (deterministic).

    Args:
      images: float [B, H, W, 3] RGB in [0, 1].
      brightness_factors, contrast_factors, saturation_factors, hue_factors:
        [B] float factors, or None to leave that op out (torchvision's ``None``).
      orders: [B, 4] int, each row a permutation of (0 brightness, 1 contrast,
        2 saturation, 3 hue) as torch.randperm(4) gives; None = (0, 1, 2, 3).

    Returns:
      float32 [B, H, W, 3] in [0, 1].

    Implementation note: instead of running all four ops at each of the four
    positions and selecting (4x the expensive hue), each image's three blend ops
    are split into those before and after its hue op; blend steps with factor 1
    are exact identities, so the batch runs 3 blend steps, one hue pass, 3 blend
    steps, with per-image selection and no data-dependent shapes.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    batch = tf.shape(images)[0]
    if orders is None:
        orders = tf.tile(tf.range(NUM_OPS)[None], [batch, 1])
    orders = tf.cast(orders, tf.int32)
    ones = tf.ones([batch], tf.float32)

    def factor_or_one(f):
        return ones if f is None else tf.cast(tf.reshape(f, [-1]), tf.float32)

    factors = tf.stack([factor_or_one(brightness_factors), factor_or_one(contrast_factors),
                        factor_or_one(saturation_factors)], axis=1)  # [B, 3]
    # position[b, op] = index of op in orders[b].
    one_hot = tf.cast(tf.equal(orders[:, :, None], tf.range(NUM_OPS)[None, None, :]), tf.int32)
    position = tf.reduce_sum(one_hot * tf.range(NUM_OPS)[None, :, None], axis=1)  # [B, 4]
    hue_pos = position[:, OP_HUE:OP_HUE + 1]
    blend_pos = position[:, :OP_HUE]
    blend_rank = blend_pos - tf.cast(blend_pos > hue_pos, tf.int32)  # 0..2 among the blends

    def blend_step(x, rank, active):
        # One of brightness/contrast/saturation per image (the one with this rank),
        # or identity (factor 1) where `active` is False.
        is_op = tf.logical_and(tf.equal(blend_rank, rank), active)  # [B, 3]
        ratio = tf.reduce_sum(tf.where(is_op, factors, 0.0), axis=1) + tf.where(
            tf.reduce_any(is_op, axis=1), 0.0, 1.0)
        gray = rgb_to_grayscale(x)
        mean = tf.reduce_mean(gray, axis=[-3, -2, -1], keepdims=True)
        is_con = tf.reshape(is_op[:, OP_CONTRAST], [-1, 1, 1, 1])
        is_sat = tf.reshape(is_op[:, OP_SATURATION], [-1, 1, 1, 1])
        other = tf.where(is_sat, gray, tf.where(is_con, mean, tf.zeros_like(mean)))
        return _blend(x, other, tf.reshape(ratio, [-1, 1, 1, 1]))

    for rank in range(3):
        images = blend_step(images, rank, rank < hue_pos)
    if hue_factors is not None:
        images = adjust_hue(images, hue_factors)
    for rank in range(3):
        images = blend_step(images, rank, rank >= hue_pos)
    return images


def _mix32(x):
    """A 32-bit integer hash (lowbias32-like) in int64 arithmetic.

    The multipliers are < 2**31, so products of 32-bit values stay below 2**63
    and every op is exact on CPU, GPU and XLA alike.
    """
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = tf.bitwise.bitwise_and(x * 0x7FEB352D, _MASK32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = tf.bitwise.bitwise_and(x * 0x5BD1E995, _MASK32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def stateless_uniform(seed, shape, stream=0):
    """Uniform [0, 1) float32 draws from a [2] int seed, identical with and without XLA.

    tf.random.stateless_uniform gives different numbers for the same seed under
    XLA (measured here, also with alg="philox"), so a model compiled with
    jit_compile would not reproduce an eager run. This counter-based hash does.

    Args:
      seed: int tensor of shape [2].
      shape: output shape (list or 1-D int tensor).
      stream: Python int selecting an independent stream for the same seed.
    """
    seed = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), _MASK32)
    count = tf.cast(tf.reduce_prod(shape), tf.int64)
    key = _mix32(tf.bitwise.bitwise_xor(_mix32(seed[0] + 0x61C88647 * (stream + 1) % 2**32),
                                        seed[1]))
    x = _mix32(_mix32(tf.bitwise.bitwise_xor(tf.range(count, dtype=tf.int64), key)) + key)
    # The top 24 bits make an exact float32 in [0, 1).
    x = tf.cast(tf.bitwise.right_shift(x, 8), tf.float32) * (1.0 / 2**24)
    return tf.reshape(x, shape)


def _factor_range(value, center, name, bound=None):
    """torchvision ColorJitter._check_input for a single number -> (lo, hi) or None."""
    if value < 0:
        raise ValueError(f"{name}={value} must be non-negative")
    lo, hi = center - value, center + value
    if center == 1.0:
        lo = max(lo, 0.0)
    if bound is not None and not (bound[0] <= lo <= hi <= bound[1]):
        raise ValueError(f"{name}={value} gives range {(lo, hi)}, expected within {bound}")
    return None if lo == hi == center else (lo, hi)


def sample_jitter_params(seed, batch_size, brightness=PAPER_BRIGHTNESS, contrast=PAPER_CONTRAST,
                         saturation=PAPER_SATURATION, hue=PAPER_HUE):
    """Draws per-image ColorJitter factors and op orders from a stateless seed.

    Args:
      seed: int tensor of shape [2] (tf.random.stateless_* convention).
      batch_size: number of images (int or scalar tensor).
      brightness, contrast, saturation, hue: torchvision ColorJitter arguments;
        0 leaves the op out.

    Returns:
      dict with brightness_factors, contrast_factors, saturation_factors,
      hue_factors ([B] float32 or None) and orders ([B, 4] int32 permutations).
    """
    ranges = {
        "brightness_factors": _factor_range(brightness, 1.0, "brightness"),
        "contrast_factors": _factor_range(contrast, 1.0, "contrast"),
        "saturation_factors": _factor_range(saturation, 1.0, "saturation"),
        "hue_factors": _factor_range(hue, 0.0, "hue", bound=(-0.5, 0.5)),
    }
    u = stateless_uniform(seed, tf.stack([batch_size, 4]), stream=1)
    params = {}
    for k, (name, rng) in enumerate(ranges.items()):
        params[name] = None if rng is None else rng[0] + (rng[1] - rng[0]) * u[:, k]
    # argsort of i.i.d. uniforms is a uniformly random permutation (torch.randperm's law).
    params["orders"] = tf.argsort(
        stateless_uniform(seed, tf.stack([batch_size, NUM_OPS]), stream=2), axis=1, stable=True)
    return params


def random_flip(images, seed, probability=0.5):
    """Flips each image left-right with the given probability (per image)."""
    images = tf.convert_to_tensor(images)
    u = stateless_uniform(seed, tf.shape(images)[:1], stream=3)
    flip = tf.reshape(u < probability, [-1, 1, 1, 1])
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def random_flip_and_jitter(images, seed, brightness=PAPER_BRIGHTNESS, contrast=PAPER_CONTRAST,
                           saturation=PAPER_SATURATION, hue=PAPER_HUE, flip=True):
    """The paper's augmentation on a batch: per-image flip, then ColorJitter.

    Args:
      images: float [B, H, W, 3] RGB in [0, 1].
      seed: int tensor of shape [2]; the same seed gives the same output.
      brightness, contrast, saturation, hue: ColorJitter arguments (paper's default).
      flip: apply RandomHorizontalFlip(p=0.5) first.

    Returns:
      float32 [B, H, W, 3] in [0, 1].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if flip:
        images = random_flip(images, seed)  # its own stream: independent of the jitter draws
    params = sample_jitter_params(seed, tf.shape(images)[0], brightness, contrast,
                                  saturation, hue)
    return color_jitter(images, **params)


# RandomErasing (Zhong et al. 2020; torchvision's defaults): the erased share of the
# image and the aspect ratio of the rectangle.
ERASING_AREA = (0.02, 0.33)
ERASING_ASPECT = (0.3, 3.3)
# The erased rectangle is filled with the VGGFace2 mean colour (RGB, 0..1): zero after
# the network's mean subtraction, as torchvision's value=0 on normalised images.
ERASING_FILL_RGB = (131.0912 / 255.0, 103.8827 / 255.0, 91.4953 / 255.0)


def affine_warp(images, scale, angle, shift_x, shift_y):
    """Zooms, rotates and shifts each image about its centre (bilinear; edge pixels repeat).

    Args:
      images: float [B, H, W, C].
      scale, angle, shift_x, shift_y: [B] float: zoom factor, angle in radians
        (positive turns the content clockwise on screen), shift in pixels (positive
        moves the content right / down).

    Returns:
      float32 [B, H, W, C].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    # Output pixel p samples input A (p - c) + c - t, A = R(angle) / scale.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a0, a1, b0, b1 = cos, sin, -sin, cos
    a2 = cx - a0 * cx - a1 * cy - shift_x
    b2 = cy - b0 * cx - b1 * cy - shift_y
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")


def random_affine(images, seed, max_shift=0.0, max_scale=0.0, max_rotation=0.0):
    """Per-image random shift, zoom and rotation about the centre (`affine_warp`).

    Args:
      images: float [B, H, W, C].
      seed: int tensor [2].
      max_shift: largest shift as a fraction of the side (uniform in [-max, max] per axis).
      max_scale: zoom factor uniform in [1 - max_scale, 1 + max_scale].
      max_rotation: angle uniform in [-max, max] degrees.

    Returns:
      float32 [B, H, W, C]; the identity when all three are 0.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if not (max_shift or max_scale or max_rotation):
        return images
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    u = stateless_uniform(seed, tf.stack([shape[0], 4]), stream=4) * 2.0 - 1.0
    return affine_warp(images, 1.0 + max_scale * u[:, 0],
                       (max_rotation * 3.141592653589793 / 180.0) * u[:, 1],
                       max_shift * width * u[:, 2], max_shift * height * u[:, 3])


def random_erasing(images, seed, probability=0.0):
    """RandomErasing: with ``probability`` per image, one random rectangle set to the mean colour.

    The rectangle covers ERASING_AREA of the image with an aspect ratio log-uniform in
    ERASING_ASPECT (clipped to the image), at a uniform position.

    Args:
      images: float RGB [B, H, W, 3] in [0, 1].
      seed: int tensor [2].
      probability: chance that an image gets a rectangle.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if not probability:
        return images
    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    u = stateless_uniform(seed, tf.stack([batch, 5]), stream=5)
    area = height * width * (ERASING_AREA[0] + (ERASING_AREA[1] - ERASING_AREA[0]) * u[:, 0])
    log_lo, log_hi = tf.math.log(ERASING_ASPECT[0]), tf.math.log(ERASING_ASPECT[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    box_h = tf.minimum(tf.round(tf.sqrt(area * aspect)), height)
    box_w = tf.minimum(tf.round(tf.sqrt(area / aspect)), width)
    top = tf.floor(u[:, 2] * (height - box_h + 1.0))
    left = tf.floor(u[:, 3] * (width - box_w + 1.0))
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # [B, W]
    erase = (u[:, 4] < probability)[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]
    fill = tf.constant(ERASING_FILL_RGB, tf.float32)
    return tf.where(erase[..., None], fill, images)


class FaceAugmentation(keras.layers.Layer):
    """Keras layer: the paper's flip + ColorJitter on RGB 0..255 images, training only.

    Optional extras for small datasets (all off by default, which is the paper's
    augmentation): a random affine jitter after the flip (`random_affine`: ``shift``,
    ``scale``, ``rotation``) and RandomErasing after the jitter (``erasing``: its
    probability).

    Inputs are RGB in [0, 255] (uint8 or float, [B, H, W, 3]); outputs float32 in
    [0, 255]. At inference (training falsy) the input passes through (as float32).
    The random state is a keras SeedGenerator: a `.keras` file stores it, and training
    checkpoints include it explicitly (`fer_tf.training.random_state_variables`;
    tf.train.Checkpoint does not find it through the model), so a resumed run continues
    the same random sequence.

    ``jit_compile=True`` compiles the flip + jitter with XLA on its own, for models
    that are not compiled as a whole (e.g. CPU training), where XLA's fusion of the many
    elementwise passes pays (the README's benchmark notes have the measurement). The
    draws are the same either way (the RNG is XLA-stable).
    """

    def __init__(self, brightness=PAPER_BRIGHTNESS, contrast=PAPER_CONTRAST,
                 saturation=PAPER_SATURATION, hue=PAPER_HUE, flip=True, seed=None,
                 jit_compile=False, shift=0.0, scale=0.0, rotation=0.0, erasing=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        # Validate now rather than at the first training step.
        _factor_range(brightness, 1.0, "brightness")
        _factor_range(contrast, 1.0, "contrast")
        _factor_range(saturation, 1.0, "saturation")
        _factor_range(hue, 0.0, "hue", bound=(-0.5, 0.5))
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.hue, self.flip = saturation, hue, flip
        self.seed = seed
        self.jit_compile = jit_compile
        for name, value in (("shift", shift), ("scale", scale), ("rotation", rotation),
                            ("erasing", erasing)):
            if value < 0:
                raise ValueError(f"{name}={value} must be non-negative")
        if erasing > 1:
            raise ValueError(f"erasing={erasing} is a probability, expected <= 1")
        self.shift, self.scale, self.rotation, self.erasing = shift, scale, rotation, erasing
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._augment = random_flip_and_jitter
        if jit_compile:
            self._augment = tf.function(random_flip_and_jitter, jit_compile=True,
                                        reduce_retracing=True)

    def call(self, inputs, training=None):
        images = tf.cast(inputs, tf.float32)
        if not training:
            return images
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        # Flip (its own stream), affine jitter, ColorJitter, erasing; with the extras at 0
        # this is random_flip_and_jitter exactly (it too flips first, then jitters).
        x = images / 255.0
        if self.flip:
            x = random_flip(x, seed)
        x = random_affine(x, seed, self.shift, self.scale, self.rotation)
        x = self._augment(x, seed, self.brightness, self.contrast, self.saturation, self.hue,
                          flip=False)
        x = random_erasing(x, seed, self.erasing)
        return x * 255.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(brightness=self.brightness, contrast=self.contrast,
                      saturation=self.saturation, hue=self.hue, flip=self.flip, seed=self.seed,
                      jit_compile=self.jit_compile, shift=self.shift, scale=self.scale,
                      rotation=self.rotation, erasing=self.erasing)
        return config
