"""Training input through the tf.data service: same images, exact order and resume with one
worker, the same multiset (and a warning when the order differs) with two.

Servers run in this process on 127.0.0.1 with free ports (faster than subprocesses); one
test starts ``python -m fer_tf.data.service`` itself and reads through it.
"""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import logging

from fer_tf import train_config, training
from fer_tf.classes import FER2013_FOLDERS
from fer_tf.data import pipeline, service_input
from fer_tf.data.examples import LabelledImages

REPO = pathlib.Path(__file__).resolve().parents[2]
SIZE = 16
SERVICE = tf.data.experimental.service


def _start(num_workers):
    dispatcher = SERVICE.DispatchServer(SERVICE.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    workers = [SERVICE.WorkerServer(SERVICE.WorkerConfig(dispatcher_address=address, port=0))
               for _ in range(num_workers)]
    return dispatcher, workers


def _stop(dispatcher, workers):
    for worker in workers:
        worker.stop()
    dispatcher.stop()


@pytest.fixture(scope="module")
def one_worker():
    dispatcher, workers = _start(1)
    yield dispatcher.target
    _stop(dispatcher, workers)


@pytest.fixture(scope="module")
def two_workers():
    dispatcher, workers = _start(2)
    yield dispatcher.target
    _stop(dispatcher, workers)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image_folder tree: 20 training, 8 validation PNGs, each a distinct image."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    names = sorted(FER2013_FOLDERS, key=FER2013_FOLDERS.get)
    for split, n in (("train", 20), ("validation", 8)):
        for i in range(n):
            directory = root / split / names[i % 7]
            directory.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            tf.io.write_file(str(directory / f"{i:03d}.png"), tf.io.encode_png(pixels))
    return root


def _config(folder, data_service="", **overrides):
    base = dict(dataset="image_folder", data_dir=str(folder), image_size=SIZE, backbone="tiny",
                random_init=True, augment=False, batch_size=4, micro_batches=2, max_updates=6,
                validate_every=3, checkpoint_every=1, log_every=2, patience=0,
                lr_head=0.05, lr_backbone=0.01, eval_batch_size=8, data_service=data_service)
    base.update(overrides)
    return train_config.TrainConfig(**base)


def _examples(ds):
    """(image bytes, label, weight) of every example of a dataset of batches, in order."""
    return [(x.tobytes(), int(y), float(w)) for batch in ds.as_numpy_iterator()
            for x, y, w in zip(*batch)]


def _checkpoint_values(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, training.CHECKPOINT_DIR))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "save_counter" not in name and "OBJECT_GRAPH" not in name}


def test_one_worker_gives_the_local_batches_in_order(folder, one_worker):
    """Order guaranteed: one worker takes the ordered list's examples one after another.
    Whole epochs and resumed ones (the skip is applied before serving), two epochs."""
    local = training.make_loop_data(_config(folder))
    served = training.make_loop_data(_config(folder, one_worker))
    for epoch, skip in ((0, 0), (1, 0), (1, 3), (1, 5)):  # 5: resumed after the last batch
        assert _examples(served.train_epoch(epoch, skip)) == _examples(
            local.train_epoch(epoch, skip)), (epoch, skip)


@pytest.mark.slow
def test_training_and_resume_through_one_worker_equal_local(folder, one_worker, tmp_path):
    """6 updates of the tiny model locally == through the service == 3 through the service,
    then a new run resuming to 6 (across the epoch end: 5 batches per epoch). Tolerance:
    none (the same images in the same order on the same CPU: bit-identical)."""
    local = training.train_and_evaluate(_config(folder), str(tmp_path / "local"))
    served = training.train_and_evaluate(_config(folder, one_worker), str(tmp_path / "served"))
    training.train_and_evaluate(_config(folder, one_worker, max_updates=3),
                                str(tmp_path / "resumed"))
    resumed = training.train_and_evaluate(_config(folder, one_worker), str(tmp_path / "resumed"))
    expected = _checkpoint_values(tmp_path / "local")
    for run in ("served", "resumed"):
        values = _checkpoint_values(tmp_path / run)
        assert sorted(values) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(values[name], value, err_msg=f"{run}: {name}")
    assert served["val_abaw_score"] == resumed["val_abaw_score"] == local["val_abaw_score"]


def test_two_workers_give_the_same_multiset_and_say_when_order_differs(folder, two_workers,
                                                                      caplog):
    """Two workers: every example exactly once per epoch (20 images, batch 4: nothing is
    dropped at the end, so the multisets must be equal), also from a resume position; the
    order is whatever the workers make of it, and the out-of-order warning appears exactly
    in the epochs whose order differs from the local one."""
    local = training.make_loop_data(_config(folder))
    served = training.make_loop_data(_config(folder, two_workers))
    for epoch, skip in ((0, 0), (1, 0), (2, 0), (2, 2)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = _examples(served.train_epoch(epoch, skip))
        want = _examples(local.train_epoch(epoch, skip))
        assert sorted(got) == sorted(want), (epoch, skip)
        assert len(set(got)) == len(got) == 20 - 4 * skip
        warned = caplog.text.count("delivered examples out of order")
        assert warned == (0 if got == want else 1), (epoch, skip, warned)


@pytest.mark.slow
def test_two_workers_train(folder, two_workers, tmp_path):
    """A few updates of the tiny model with two workers run and finish (values approximate)."""
    result = training.train_and_evaluate(_config(folder, two_workers, max_updates=4),
                                         str(tmp_path))
    assert result["updates"] == 4 and result["finished"] is True


def _positions_dataset(positions):
    images = tf.zeros([len(positions), 2, 2, 3], tf.uint8)
    return tf.data.Dataset.from_tensor_slices((
        tf.constant(positions, tf.int64), images, tf.zeros([len(positions)], tf.int32),
        tf.ones([len(positions)])))


@pytest.mark.parametrize("positions,warned,named", [
    ([0, 1, 2, 3, 4], 0, []),
    ([0, 2, 1, 3, 4], 1, []),        # two workers overtaking each other, nothing missing
    ([0, 1, 3, 4], 0, ["c.png"]),    # in order, position 2 never came: dropped
    ([1, 0, 3, 4], 1, ["c.png"]),    # out of order and one dropped
    ([0, 1, 2], 0, ["d.png", "e.png"]),  # drops at the end
])
def test_order_check_warns_on_disorder_and_names_what_never_came(positions, warned, named,
                                                                 caplog):
    paths = [f"/x/{c}.png" for c in "abcde"]
    check = service_input._OrderCheck("grpc://test:1", paths)  # pylint: disable=protected-access
    with caplog.at_level(logging.WARNING):
        out = list(check.apply(_positions_dataset(positions).batch(2)).as_numpy_iterator())
    assert len(out) == len(positions)
    assert caplog.text.count("delivered examples out of order") == warned
    rejected = [line.split("/")[-1].split(":")[0] for line in caplog.text.splitlines()
                if "image decoder rejected" in line]
    assert rejected == named


def test_file_only_the_decoder_rejects_is_dropped_and_named_like_locally(folder, one_worker,
                                                                         tmp_path, caplog):
    train = sorted(str(p) for p in (folder / "train").glob("*/*.png"))
    liar = tmp_path / "liar.jpg"  # JPEG markers at both ends, garbage between
    liar.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 500 + b"\xff\xd9")
    images = LabelledImages(train[:5] + [str(liar)] + train[5:9], list(range(10)))
    local = _examples(pipeline.make_dataset(images, 3, image_size=SIZE, seed=1))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        served = _examples(pipeline.make_dataset(
            images, 3, image_size=SIZE, seed=1, serve=service_input.ServedInput(one_worker)))
    assert served == local and len(served) == 9
    assert f"skipping {liar}: the image decoder rejected it" in caplog.text


def test_bad_addresses_are_one_line_errors_in_bounded_time():
    for address in ("localhost", "http://localhost:5050", "grpc://localhost:99999"):
        with pytest.raises(ValueError, match="tf.data service address"):
            service_input.parse_address(address)
    with pytest.raises(ValueError, match="drop one of them"):
        train_config.TrainConfig(random_init=True, cache_images=True,
                                 data_service="grpc://localhost:5050").validate()
    start = time.monotonic()
    # Port 1 on loopback: nothing listens (TF itself would retry for an hour).
    with pytest.raises(ValueError, match="no tf.data service dispatcher reachable at"):
        service_input.check_reachable("grpc://127.0.0.1:1", timeout=1.0)
    assert time.monotonic() - start < 5


class _Server:
    """``python -m fer_tf.data.service ...`` in a subprocess; stderr collected by a thread."""

    def __init__(self, *args):
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fer_tf.data.service", *args], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                        daemon=True)
        self._reader.start()

    def address(self, timeout=90):
        """HOST:PORT from the one 'serving at' log line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                if "serving at " in line:
                    return line.split("serving at ")[1].split()[0]
            time.sleep(0.2)
        raise AssertionError(f"no 'serving at' line: {''.join(self.lines)[-2000:]}")

    def stop(self, timeout=30):
        """SIGTERM, then the exit code (killed after ``timeout``, and the test fails)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._reader.join(5)


def _stop_all(servers):
    """Exit codes of every started server; each is stopped (or killed) even if one fails."""
    codes, failure = [], None
    for server in servers:
        if server is None:
            continue
        try:
            codes.append(server.stop())
        except subprocess.TimeoutExpired as e:  # killed by stop(); report after the rest
            failure = failure or e
    if failure:
        raise failure
    return codes


@pytest.mark.slow
def test_entry_point_serves_this_process_and_stops_on_sigterm(folder):
    """A dispatcher and a worker as programs (port 0: free ports): a served epoch equals the
    local one (also proves the served graph runs in another process), both stop on SIGTERM
    with exit code 0 within 30 s; an unreachable dispatcher is a one-line error, exit 2."""
    dispatcher = _Server("--dispatcher", "--port=0")
    worker = None
    try:
        address = dispatcher.address()
        worker = _Server("--worker", f"--dispatcher_address={address}", "--port=0")
        worker.address()
        images = LabelledImages(sorted(str(p) for p in (folder / "train").glob("*/*.png")),
                                [i % 7 for i in range(20)])
        served = pipeline.make_dataset(images, 4, image_size=SIZE, seed=2,
                                       serve=service_input.ServedInput(f"grpc://{address}"))
        assert _examples(served) == _examples(pipeline.make_dataset(images, 4, image_size=SIZE,
                                                                    seed=2))
    finally:
        codes = _stop_all([worker, dispatcher])
    assert codes == [0, 0]
    assert any("dispatcher stopped" in line for line in dispatcher.lines)
    assert any("worker (dispatcher" in line and "stopped" in line for line in worker.lines)

    lonely = _Server("--worker", "--dispatcher_address=127.0.0.1:1", "--port=0")
    try:
        assert lonely.proc.wait(60) == 2
    finally:
        if lonely.proc.poll() is None:
            lonely.proc.kill()
            lonely.proc.wait()
        lonely._reader.join(5)  # pylint: disable=protected-access
    errors = [line for line in lonely.lines if line.startswith("fer_tf.data.service: error:")]
    assert len(errors) == 1 and "no tf.data service dispatcher reachable" in errors[0]
