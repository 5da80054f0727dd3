"""fer_tf.data.pipeline on small image trees written here (and a few real FER2013 files)."""

import logging

import cv2
import numpy as np
import pytest
import tensorflow as tf

from fer_tf.data import pipeline
from fer_tf.data.examples import LabelledImages


def _write_images(root, n=20, size=112):
    """n colour JPEGs (label i % 7) and returns LabelledImages; pixel [0,0] encodes the index."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        img = cv2.GaussianBlur(img, (9, 9), 3)  # smooth: JPEG keeps it close
        path = root / f"img{i:03d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
        labels.append(i % 7)
    return LabelledImages(paths, labels)


def _all(ds):
    images, labels, weights = [], [], []
    for x, y, w in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
        weights.append(w.numpy())
    return np.concatenate(images), np.concatenate(labels), np.concatenate(weights)


def test_batches_dtypes_and_weights(tmp_path):
    src = _write_images(tmp_path, n=10)
    weights = np.arange(1, 8, dtype=np.float32)
    ds = pipeline.make_dataset(src, batch_size=4, shuffle=False, class_weights=weights)
    x, y, w = next(iter(ds))
    assert x.dtype == tf.uint8 and x.shape == (4, 112, 112, 3)
    assert y.dtype == tf.int32 and w.dtype == tf.float32
    images, labels, ws = _all(ds)
    np.testing.assert_array_equal(labels, src.labels)
    np.testing.assert_array_equal(ws, weights[src.labels])
    # Same pixels as decoding each file on its own (eager vs tf.data).
    for i in (0, 9):
        ref = pipeline.decode_image(tf.io.read_file(src.paths[i]), 112).numpy()
        np.testing.assert_array_equal(images[i], ref)
        cv_rgb = cv2.imread(src.paths[i])[:, :, ::-1]
        diff = np.abs(images[i].astype(int) - cv_rgb)  # IDCT and chroma upsampling differ
        assert diff.max() <= 8 and diff.mean() < 1.5
    assert len(list(pipeline.make_dataset(src, 4, drop_remainder=True))) == 2


def test_gray_and_png_become_three_channels_and_are_resized(tmp_path):
    gray = (np.arange(48 * 48) % 256).astype(np.uint8).reshape(48, 48)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "g.jpg"), gray)
    big = np.zeros((300, 200, 3), np.uint8)
    big[:, :, 2] = 200  # BGR -> red in RGB
    cv2.imwrite(str(tmp_path / "big.png"), big)
    src = LabelledImages([tmp_path / "g.png", tmp_path / "g.jpg", tmp_path / "big.png"], [0, 1, 2])
    images, _, _ = _all(pipeline.make_dataset(src, 3, image_size=64, shuffle=False))
    assert images.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(images[0, :, :, 0], images[0, :, :, 2])
    np.testing.assert_array_equal(images[2, 10, 10], [200, 0, 0])
    expected = tf.image.resize(gray[:, :, None].astype(np.float32), (64, 64), antialias=True)
    np.testing.assert_allclose(images[0, :, :, 1], np.round(expected[:, :, 0]), atol=1)


def test_seeded_shuffle_is_repeatable_and_reshuffles_each_epoch(tmp_path):
    src = _write_images(tmp_path, n=20)
    order = lambda ds: [int(v) for v in _all(ds)[0][:, 0, 0, 0]]  # noqa: E731
    a = pipeline.make_dataset(src, 5, seed=1)
    first, second = order(a), order(a)
    assert first == order(pipeline.make_dataset(src, 5, seed=1))
    assert first != second  # a new order each iteration (epoch)
    assert sorted(first) == sorted(second)
    assert first != order(pipeline.make_dataset(src, 5, seed=2))


def test_skip_batches_resumes_exactly(tmp_path):
    src = _write_images(tmp_path, n=7, size=32)
    full = pipeline.make_dataset(src, 3, image_size=32, seed=3, repeat=True)
    batches = [b[0].numpy() for b in full.take(5)]  # crosses an epoch boundary
    resumed = pipeline.make_dataset(src, 3, image_size=32, seed=3, repeat=True, skip_batches=2)
    for k, b in enumerate(resumed.take(3)):
        np.testing.assert_array_equal(b[0].numpy(), batches[2 + k])


def test_iterator_checkpoint_also_resumes(tmp_path):
    src = _write_images(tmp_path, n=12)
    it = iter(pipeline.make_dataset(src, 4, seed=3, repeat=True))
    next(it)
    ckpt = tf.train.Checkpoint(data=it)
    path = ckpt.write(str(tmp_path / "ckpt"))
    expected = next(it)[1].numpy()
    it2 = iter(pipeline.make_dataset(src, 4, seed=3, repeat=True))
    tf.train.Checkpoint(data=it2).read(path).assert_consumed()
    np.testing.assert_array_equal(next(it2)[1].numpy(), expected)


def test_corrupt_files_are_skipped_counted_and_logged(tmp_path, caplog):
    src = _write_images(tmp_path, n=6)
    good = open(src.paths[0], "rb").read()
    bad = {
        "truncated.jpg": good[: len(good) // 2],
        "empty.jpg": b"",
        "text.jpg": b"this is not an image",
        "truncated.png": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()[:30],
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    paths = list(src.paths) + [str(tmp_path / n) for n in bad] + [str(tmp_path / "missing.jpg")]
    ok, skipped = pipeline.check_image_files(paths)
    assert ok.sum() == 6 and len(skipped) == 5
    assert {p.split("/")[-1] for p, _ in skipped} == set(bad) | {"missing.jpg"}
    with caplog.at_level(logging.WARNING):
        ds = pipeline.make_dataset(LabelledImages(paths, [0] * len(paths)), 4, shuffle=False)
    assert "skipped 5 of 11" in caplog.text and "truncated.jpg" in caplog.text
    assert len(_all(ds)[1]) == 6
    # The next epoch's dataset reuses the check (files read once) and still excludes them.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):  # whatever absl's verbosity is
        again = pipeline.make_dataset(LabelledImages(paths, [0] * len(paths)), 4, shuffle=False)
    assert "excluding the 5 undecodable files" in caplog.text
    assert len(_all(again)[1]) == 6


def _liars(root, names):
    """Files with JPEG markers at both ends and garbage between: only the decoder can tell."""
    for name in names:
        (root / name).write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 500 + b"\xff\xd9")
    return [str(root / name) for name in names]


def test_file_passing_the_check_but_not_decoding_is_dropped_not_fatal(tmp_path):
    src = _write_images(tmp_path, n=3)
    paths = list(src.paths) + _liars(tmp_path, ["liar.jpg"])
    ds = pipeline.make_dataset(LabelledImages(paths, [0, 1, 2, 3]), 2, shuffle=False)
    assert list(_all(ds)[1]) == [0, 1, 2]
    strict = pipeline.make_dataset(LabelledImages(paths, [0, 1, 2, 3]), 2, shuffle=False,
                                   skip_corrupt=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        _all(strict)


def test_files_only_the_decoder_rejects_are_named_and_counted(tmp_path, caplog):
    src = _write_images(tmp_path, n=8)
    liars = _liars(tmp_path, ["liar_a.jpg", "liar_b.jpg", "liar_c.jpg"])
    # Bad files first, in the middle (two in a row) and last: every position of a gap.
    paths = [liars[0]] + list(src.paths[:4]) + liars[1:] + list(src.paths[4:]) + [liars[0]]
    labels = [6] + list(src.labels[:4]) + [6, 6] + list(src.labels[4:]) + [6]
    images = LabelledImages(paths, labels)
    good = _all(pipeline.make_dataset(src, 3, shuffle=True, seed=4))
    with caplog.at_level(logging.WARNING):
        x, y, _ = _all(pipeline.make_dataset(images, 3, shuffle=True, seed=4))
    named = [line for line in caplog.text.splitlines() if "image decoder rejected" in line]
    assert len(named) == 4  # liar_a.jpg is listed twice
    assert {name.split("/")[-1].split(":")[0] for name in named} == {
        "liar_a.jpg", "liar_b.jpg", "liar_c.jpg"}
    assert set(liars) <= set(pipeline.decoder_rejected())
    # Only good images remain, with their own labels.
    assert sorted(y.tolist()) == sorted(good[1].tolist())
    assert sorted(map(bytes, x.reshape(8, -1))) == sorted(map(bytes, good[0].reshape(8, -1)))
    # A resumed epoch names the drops after its skip position as well (the skip counts
    # listed files: 6 = liar_a and four good ones and liar_b).
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = _all(pipeline.make_dataset(images, 3, shuffle=False, skip_batches=2))
    assert [line.split("/")[-1].split(":")[0] for line in caplog.text.splitlines()
            if "image decoder rejected" in line] == ["liar_c.jpg", "liar_a.jpg"]
    assert resumed[1].tolist() == list(src.labels[4:])
    # In-memory decoding drops, names and keeps labels aligned the same way.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cached = pipeline.DecodedImages(images, 112)
    assert caplog.text.count("image decoder rejected") == 4
    np.testing.assert_array_equal(cached.labels, src.labels)
    np.testing.assert_array_equal(
        cached.pixels, _all(pipeline.make_dataset(src, 8, shuffle=False))[0])


def test_records_bytes_and_decoded(tmp_path):
    src = _write_images(tmp_path, n=5)
    data = [open(p, "rb").read() for p in src.paths]
    encoded = tf.data.Dataset.from_tensor_slices(
        {"image": data, "label": src.labels, "video": ["v"] * 5})
    x, y, w = _all(pipeline.make_dataset_from_records(encoded, 2, shuffle=False,
                                                      class_weights=np.arange(7) + 1.0))
    ref, ref_y, _ = _all(pipeline.make_dataset(src, 5, shuffle=False))
    np.testing.assert_array_equal(x, ref)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(w, ref_y + 1.0)
    decoded = tf.data.Dataset.from_tensor_slices({"image": ref, "label": src.labels})
    x2 = _all(pipeline.make_dataset_from_records(decoded, 5, shuffle=False))[0]
    np.testing.assert_array_equal(x2, ref)
    with pytest.raises(ValueError, match="'image' and 'label'"):
        pipeline.make_dataset_from_records(tf.data.Dataset.range(3), 2)


def test_real_fer2013_files_decode(fer2013_dir):
    paths = sorted((fer2013_dir / "test" / "happy").glob("*.jpg"))[:8]
    assert paths, "no FER2013 test/happy images"
    src = LabelledImages(paths, [4] * len(paths))
    x, y, _ = _all(pipeline.make_dataset(src, 8, shuffle=False))
    assert x.shape == (8, 112, 112, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 1])  # gray -> 3 equal channels
    assert x.std() > 10


def test_decoded_images_give_the_file_pipelines_batches_in_the_same_order(tmp_path):
    src = _write_images(tmp_path, n=30, size=40)
    decoded = pipeline.DecodedImages(src, 32)
    assert decoded.pixels.shape == (30, 32, 32, 3) and decoded.pixels.dtype == np.uint8
    weights = np.linspace(0.5, 2.0, 7)
    for seed, skip in ((0, 0), (5, 2)):
        options = dict(image_size=32, shuffle=True, seed=seed, class_weights=weights,
                       drop_remainder=True, skip_batches=skip)
        files = _all(pipeline.make_dataset(src, 4, **options))
        memory = _all(pipeline.make_dataset(decoded, 4, **options))
        for a, b in zip(files, memory):  # pixels, labels, weights: bit-identical
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="decoded at 32, not 48"):
        pipeline.make_dataset(decoded, 4, image_size=48)


def test_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path, huge_png):
    huge = huge_png
    assert huge.stat().st_size < 1_000_000
    src = _write_images(tmp_path, n=3, size=16)
    ok, skipped = pipeline.check_image_files(src.paths + [str(huge)])
    assert ok.tolist() == [True, True, True, False]
    assert skipped[0][0] == str(huge) and "16000x16000 pixels" in skipped[0][1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 100000000 pixels"):
        pipeline.decode_image(tf.constant(huge.read_bytes()), 48)
    # Headers of every supported format give their real size.
    for name, image in (("a.png", np.zeros((30, 20, 3), np.uint8)),
                        ("a.jpg", np.zeros((31, 21, 3), np.uint8)),
                        ("a.bmp", np.zeros((32, 22, 3), np.uint8))):
        cv2.imwrite(str(tmp_path / name), image)
        head = (tmp_path / name).read_bytes()[:65536]
        assert pipeline.header_dimensions(head) == (image.shape[1], image.shape[0]), name
        pixels = pipeline._header_pixels(tf.constant((tmp_path / name).read_bytes()))
        assert int(pixels) == image.shape[0] * image.shape[1], name


def test_every_input_path_runs_without_the_autotuner(tmp_path):
    # Training drops each epoch's iterator at its end; with tf.data's autotuner on, that
    # drop waited for the autotuner's thread (up to half a minute in FER2013 runs).
    src = _write_images(tmp_path, n=8, size=40)
    records = tf.data.Dataset.from_tensor_slices(
        {"image": [open(p, "rb").read() for p in src.paths], "label": src.labels})
    datasets = {
        "files": pipeline.make_dataset(src, 4, image_size=32),
        "memory": pipeline.make_dataset(pipeline.DecodedImages(src, 32), 4, image_size=32),
        "records": pipeline.make_dataset_from_records(records, 4, image_size=32),
    }
    for name, ds in datasets.items():
        assert ds.options().autotune.enabled is False, name
        assert len(list(ds)) == 2, name
