"""Face detection on the real photos in ../shared/data/faces, and cropping."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import faces
from fer_tf.data import pipeline


@pytest.fixture(scope="module")
def detector():
    return faces.FaceDetector()


# Counts measured with FaceDetector() defaults (MTCNN from mtcnn 1.0.0, min_face_size 20,
# min_score 0.9): they equal the faces in the photos (README of ../shared/data/faces).
EXPECTED_FACES = {
    "pyfeat_single_face.jpg": 1,
    "fer_justin.jpg": 1,
    "pyfeat_multi_face.jpg": 5,
    "ina_India_236650352.jpg": 5,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FACES))
def test_detects_every_face_in_real_photos(detector, faces_dir, name):
    image = faces.read_image_rgb(faces_dir / name)
    boxes = detector.detect(image)
    assert len(boxes) == EXPECTED_FACES[name], boxes
    height, width = image.shape[:2]
    for box in boxes:
        assert isinstance(box, faces.Box)
        assert 0 <= box.x and 0 <= box.y and box.x + box.w <= width and box.y + box.h <= height
        assert box.w >= 20 and box.h >= 20 and 0.9 <= box.score <= 1.0
    # Deterministic: reading order, and the same boxes on a second call.
    assert [b.x for b in boxes] == sorted(b.x for b in boxes)
    assert detector.detect(image) == boxes
    crops = faces.crop_faces(image, boxes, margin=0.2, size=112)
    assert crops.shape == (len(boxes), 112, 112, 3) and crops.dtype == np.uint8


def test_single_face_box_covers_the_face(detector, faces_dir):
    # fer_justin.jpg is 381x384 with one face in the middle: the box centre lies in the
    # central third of the photo and the box spans a sizeable part of it.
    image = faces.read_image_rgb(faces_dir / "fer_justin.jpg")
    (box,) = detector.detect(image)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    assert 127 < cx < 254 and 128 < cy < 256
    assert box.h > 100


def assert_same_boxes(actual, expected):
    """Identical pixel boxes; scores equal to float32 rounding.

    CPU convolution kernels may sum in a different order for an image's position in a
    batch (Eigen's vectorised GEMM handles remainder rows separately on AVX2), so a score
    can differ in its last bits; 1e-6 relative is about 8 float32 ulps.
    """
    assert [b[:4] for b in actual] == [b[:4] for b in expected]
    np.testing.assert_allclose(
        [b.score for b in actual], [b.score for b in expected], rtol=1e-6
    )


def test_detect_batch_same_as_single_and_no_face(detector, faces_dir):
    image = faces.read_image_rgb(faces_dir / "ina_India_236650352.jpg")
    flipped = np.ascontiguousarray(image[:, ::-1])
    blank = np.full_like(image, 128)
    batch = detector.detect_batch([image, flipped, blank])
    assert_same_boxes(batch[0], detector.detect(image))
    assert_same_boxes(batch[1], detector.detect(flipped))
    assert batch[2] == []
    assert detector.detect_batch([blank, blank]) == [[], []]
    assert detector.detect_batch([]) == []


def test_grayscale_image_accepted(detector, faces_dir):
    image = faces.read_image_rgb(faces_dir / "fer_justin.jpg")
    gray = image.mean(axis=2).astype(np.uint8)
    assert len(detector.detect(gray)) == 1


def test_bad_images_rejected(tmp_path):
    detector_input = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        faces.crop_faces(detector_input, [(0, 0, 2, 2)])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        faces.read_image_rgb(bad)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        faces.read_image_rgb(tmp_path / "missing.jpg")


def test_crop_is_square_enlarged_and_padded():
    # A 100x60 image whose pixel values encode their coordinates.
    image = np.zeros((60, 100, 3), np.uint8)
    image[..., 0] = np.arange(100)[None, :]
    image[..., 1] = np.arange(60)[:, None]
    image[..., 2] = 255
    # Box 20x10 at (40, 25); margin 0.5 -> side 40 centred at (50, 30): window x 30..70,
    # y 10..50, all inside. size=40 keeps pixels 1:1.
    (crop,) = faces.crop_faces(image, [(40, 25, 20, 10)], margin=0.5, size=40)
    np.testing.assert_array_equal(crop, image[10:50, 30:70])
    # Near the corner: box (0, 0, 10, 10), margin 0.5 -> side 20 at (-5, -5): the first
    # 5 rows/columns are black padding, the rest is image[0:15, 0:15].
    (crop,) = faces.crop_faces(image, [faces.Box(0, 0, 10, 10, 1.0)], margin=0.5, size=20)
    assert not crop[:5].any() and not crop[:, :5].any()
    np.testing.assert_array_equal(crop[5:, 5:], image[0:15, 0:15])


@pytest.mark.parametrize("box_side,size", [(150, 112), (30, 112), (112, 112)])
def test_crop_equals_training_decode_of_the_same_window(box_side, size):
    """A predicted face reaches the model as training would decode the same crop saved as
    a (lossless) PNG: bit-equal, whether the window shrinks, grows or keeps its size."""
    rng = np.random.default_rng(box_side)
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (5, 5), 0)
    box = (120, 80, box_side, box_side)
    (crop,) = faces.crop_faces(image, [box], margin=0.0, size=size)
    window = np.ascontiguousarray(image[80:80 + box_side, 120:120 + box_side])
    png = tf.io.encode_png(tf.constant(window))
    expected = pipeline.decode_image(png, size).numpy()
    np.testing.assert_array_equal(crop, expected)


def test_crop_resizes_and_handles_no_boxes():
    image = np.full((200, 200, 3), 77, np.uint8)
    crops = faces.crop_faces(image, [(50, 50, 100, 80)], margin=0.2, size=112)
    assert crops.shape == (1, 112, 112, 3)
    assert (crops == 77).all()  # window 120x120 lies inside the uniform image
    assert faces.crop_faces(image, [], size=112).shape == (0, 112, 112, 3)
    with pytest.raises(ValueError, match="margin"):
        faces.crop_faces(image, [(0, 0, 10, 10)], margin=-0.1)


def test_larger_min_face_size_finds_the_same_faces(detector, faces_dir):
    # min_face_size 40 detects on a half-size image (4x faster measured) and scales the
    # boxes back: same count, and every box within 10 px of the full-size box.
    fast = faces.FaceDetector(min_face_size=40)
    for name in ("pyfeat_multi_face.jpg", "ina_India_236650352.jpg"):
        image = faces.read_image_rgb(faces_dir / name)
        full, half = detector.detect(image), fast.detect(image)
        assert len(half) == len(full) == 5
        for a, b in zip(full, half):
            np.testing.assert_allclose(a[:4], b[:4], atol=10)
    with pytest.raises(ValueError, match="min_face_size"):
        faces.FaceDetector(min_face_size=10)
