"""Face detection and cropping for prediction on photos and videos.

The detector is MTCNN (Zhang et al. 2016) from the `mtcnn` PyPI package: its weights
ship inside the wheel (mtcnn/assets/weights/*.lz4) and it runs on TensorFlow, so
nothing is downloaded at run time and no second framework is needed. (OpenCV 5's
wheels no longer ship the Haar cascades, and its YuNet detector needs a model file
that no wheel ships.)

Crops follow the training crops: the box is enlarged by `margin` of its size on every
side (as fer_tf.data.expw does for ExpW), made square around its centre so faces keep
their aspect ratio (as Aff-Wild2's 112x112 crops), padded with black where it leaves
the image, and resized with the training pipeline's own resize (so a detected face
reaches the model as a training crop of the same size would).
"""

import os
from typing import List, NamedTuple, Sequence

import cv2
import numpy as np
import tensorflow as tf

from fer_tf.data import pipeline


# The face size MTCNN is always run with (see FaceDetector's min_face_size).
_MTCNN_MIN_FACE = 20


class Box(NamedTuple):
    """A detected face: top-left corner, width and height in pixels, and confidence."""

    x: int
    y: int
    w: int
    h: int
    score: float


def as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]  # RGBA: alpha does not help detection
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


class FaceDetector:
    """MTCNN face detector returning every face in an RGB image.

    Args:
      min_face_size: smallest face side in pixels searched for; larger is faster.
        Values above 20 shrink the image by 20 / min_face_size before detection and
        scale the boxes back (mtcnn 1.0.0's own min_face_size > 20 was measured to
        find no face at all in the test photos, so it is always called with 20).
      min_score: faces with a lower final confidence are dropped.
      thresholds: MTCNN's per-stage confidence thresholds (PNet, RNet, ONet); the
        package defaults (0.6, 0.7, 0.8) find all faces of the test photos.
      device: TensorFlow device the detector runs on.
    """

    def __init__(self, min_face_size: int = 20, min_score: float = 0.9,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.8), device: str = "CPU:0"):
        try:
            from mtcnn import MTCNN  # pylint: disable=import-outside-toplevel
        except ImportError as error:
            raise ImportError(
                "face detection needs the 'mtcnn' package (its weights ship in the wheel): "
                "pip install mtcnn==1.0.0 lz4"
            ) from error
        if min_face_size < _MTCNN_MIN_FACE:
            raise ValueError(f"min_face_size must be >= {_MTCNN_MIN_FACE} pixels, got {min_face_size}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must be 3 numbers (PNet, RNet, ONet), got {thresholds!r}")
        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self.thresholds = tuple(float(t) for t in thresholds)
        self._mtcnn = MTCNN(stages="face_and_landmarks_detection", device=device)
        self._scale = _MTCNN_MIN_FACE / self.min_face_size

    def _kwargs(self):
        return dict(
            min_face_size=_MTCNN_MIN_FACE,
            threshold_pnet=self.thresholds[0],
            threshold_rnet=self.thresholds[1],
            threshold_onet=self.thresholds[2],
        )

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        image = as_rgb(image)
        if self._scale < 1.0:
            height, width = image.shape[:2]
            size = (max(1, round(width * self._scale)), max(1, round(height * self._scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return image

    def _boxes(self, faces, shape) -> List[Box]:
        height, width = shape[:2]
        boxes = []
        for face in faces:
            x, y, w, h = (int(round(v / self._scale)) for v in face["box"])
            # Scaling back may round a box past the border: keep it inside the image.
            x, y = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
            w, h = min(w, width - x), min(h, height - y)
            score = float(face["confidence"])
            if score >= self.min_score and w > 0 and h > 0:
                boxes.append(Box(x, y, w, h, score))
        # Reading order (left to right, then top to bottom) so face i is stable.
        return sorted(boxes, key=lambda b: (b.x, b.y, -b.score, b.w, b.h))

    def detect(self, image_rgb: np.ndarray) -> List[Box]:
        """Every face in one image.

        Args:
          image_rgb: uint8 [H, W, 3] RGB (grayscale [H, W] / [H, W, 1] and RGBA are
            accepted and converted).

        Returns:
          list of `Box(x, y, w, h, score)`, sorted left to right then top to bottom;
          empty when there is no face (not an error).
        """
        image = as_rgb(image_rgb)
        faces = self._mtcnn.detect_faces(self._prepare(image), **self._kwargs())
        if faces and isinstance(faces[0], list):  # some versions wrap a single image
            faces = faces[0]
        return self._boxes(faces, image.shape)

    def detect_batch(self, images_rgb: Sequence[np.ndarray]) -> List[List[Box]]:
        """`detect` on several images: same-sized ones (video frames) in one batch.

        Images of different sizes are detected one at a time.

        Returns:
          one list of boxes per image, in input order.
        """
        images = [self._prepare(image) for image in images_rgb]
        if len({image.shape for image in images}) != 1:
            # MTCNN pads mixed sizes to one canvas, which shifts and changes boxes
            # (measured with mtcnn 1.0.0): detect those one by one.
            return [self.detect(image) for image in images_rgb]
        if len(images) == 1:
            return [self.detect(images_rgb[0])]
        results = self._mtcnn.detect_faces(images, **self._kwargs())
        if len(results) != len(images):  # no face in any image: MTCNN returns []
            results = [[] for _ in images]
        return [self._boxes(faces, image.shape) for faces, image in zip(results, images_rgb)]


def square_box(box, margin: float = 0.2):
    """The square crop window (x0, y0, side) around a box enlarged by `margin`.

    The side is the box's longer side times (1 + 2 * margin), centred on the box;
    it may extend past the image (crop_faces pads there).
    """
    x, y, w, h = box[:4]
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (a fraction of the box size per side), got {margin}")
    side = max(int(round(max(w, h) * (1.0 + 2.0 * margin))), 1)
    cx, cy = x + w / 2.0, y + h / 2.0
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


# One trace per output size; the window side varies from face to face.
_resize_crop = tf.function(pipeline.resize_uint8, reduce_retracing=True)


def crop_faces(image: np.ndarray, boxes: Sequence, margin: float = 0.2, size: int = 112) -> np.ndarray:
    """Square crops of the faces, resized to `size` x `size`.

    Args:
      image: uint8 [H, W, 3] RGB (grayscale is converted to 3 channels).
      boxes: `Box` or (x, y, w, h[, score]) sequences.
      margin: enlargement of each box per side, as a fraction of its size (0.2 adds
        20% of the box on every side).
      size: output side in pixels (112 as Aff-Wild2's crops; the model resizes to
        its own input size in-graph anyway).

    Returns:
      uint8 [len(boxes), size, size, 3]; parts outside the image are black.
    """
    image = as_rgb(image)
    height, width = image.shape[:2]
    crops = np.zeros((len(boxes), size, size, 3), np.uint8)
    for i, box in enumerate(boxes):
        x0, y0, side = square_box(box, margin)
        canvas = np.zeros((side, side, 3), np.uint8)
        # Intersection of the window with the image, in image and canvas coordinates.
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + side, width), min(y0 + side, height)
        if ix1 > ix0 and iy1 > iy0:
            canvas[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = image[iy0:iy1, ix0:ix1]
        # Training's resize (antialiased bilinear when shrinking, uint8 rounding), not
        # OpenCV's INTER_AREA: on real photos the two differ by 0.4-2 grey levels on
        # average and up to 25, a shift between training and prediction inputs.
        crops[i] = _resize_crop(tf.constant(canvas), size).numpy()
    return crops


def read_image_rgb(path) -> np.ndarray:
    """Reads an image file as uint8 RGB; an unreadable file raises ValueError naming it."""
    if not os.path.isfile(os.fspath(path)):
        raise FileNotFoundError(f"image not found: {path}")
    data = np.fromfile(os.fspath(path), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image {path}: not a readable JPEG/PNG/BMP/... file (corrupt or wrong format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

