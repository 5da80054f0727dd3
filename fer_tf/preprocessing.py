"""The one preprocessing function shared by training, evaluation and export.

Images enter as RGB in [0, 255] (uint8 or float) at any size; the network wants
224x224, BGR, minus the VGGFace2 mean, unscaled (docs/senet50.md, "Input the weights expect").
"""

import tensorflow as tf

NETWORK_INPUT_SIZE = 224

# VGGFace2 per-channel mean in B, G, R order (Caffe release; cydonia999/VGGFace2-pytorch).
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)


def resize(images, size: int = NETWORK_INPUT_SIZE):
    """Bilinear resize of RGB images (batch or single) to size x size, as float32 0..255.

    Bilinear with half-pixel centres, no antialiasing: what torchvision's Resize
    does when it upsamples the 112x112 Aff-Wild2 crops. A no-op at the target size.
    """
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    if tuple(images.shape[-3:-1]) == (size, size):
        return images
    # Static sizes differ or are unknown: at equal sizes bilinear resizing with
    # half-pixel centres samples exactly the pixel centres, so it is the identity.
    return tf.image.resize(images, (size, size), method="bilinear")


def center_crop(images, side: int):
    """The central side x side square of a batch of images [B, H, W, C] (static H, W).

    The offsets are ``round((H - side) / 2)`` and ``round((W - side) / 2)`` with Python's
    round (halves to even), as torchvision's center_crop computes them.
    """
    height, width = images.shape[-3], images.shape[-2]
    if side > min(height, width):
        raise ValueError(f"center crop {side} is larger than the {height}x{width} images")
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
    return images[..., top:top + side, left:left + side, :]


def rgb_to_network_input(images):
    """RGB 0..255 float -> BGR minus the VGGFace2 mean (what the weights expect)."""
    images = tf.cast(images, tf.float32)
    bgr = tf.reverse(images, axis=[-1])
    return bgr - tf.constant(VGGFACE2_MEAN_BGR, dtype=tf.float32)


def preprocess(images, size: int = NETWORK_INPUT_SIZE):
    """RGB 0..255 images of any size -> network input (resize, then BGR minus mean)."""
    return rgb_to_network_input(resize(images, size))
