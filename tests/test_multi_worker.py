"""--distribute=multi_worker: two `python -m fer_tf.train` processes on 127.0.0.1.

Each test starts real worker processes with their own TF_CONFIG on free loopback ports,
bounds every wait by a timeout and kills whatever is left in a ``finally``.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from fer_tf import train_config
from fer_tf.data import demo, pipeline, sources

REPO = pathlib.Path(__file__).resolve().parents[1]
# A process that has not finished within this is a failure, not a slow machine (a run
# here takes about 30 s on 2 busy cores, mostly start-up).
PROCESS_TIMEOUT = 240
# Short, to fail fast once a worker is gone, but longer than what one worker alone may
# do on 2 busy cores (start an epoch, write best_model.keras: 2-5 s here).
COLLECTIVE_TIMEOUT = 10


def _free_ports(count):
    """Ports free on 127.0.0.1 now (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(tmp_path, tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp_path / "tmp"))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


def _start(args, tmp_path, log_name, tf_config=None):
    """A `python -m fer_tf.train` process, stdout and stderr into tmp_path/log_name."""
    log = open(tmp_path / log_name, "w")  # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, "-m", "fer_tf.train"] + args, cwd=tmp_path,
                            env=_env(tmp_path, tf_config), stdout=log,
                            stderr=subprocess.STDOUT)
    proc.log_path = tmp_path / log_name
    log.close()
    return proc


def _start_workers(args, tmp_path, tag, count=2):
    """``count`` workers of one cluster on fresh loopback ports."""
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(count)]
    return [_start(args, tmp_path, f"{tag}_worker{i}.log",
                   {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(count)]


def _wait(procs, timeout=PROCESS_TIMEOUT):
    """Return codes, once every process has exited (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{proc.args[3:]} still running after {timeout}s:\n{_log(proc)}")
    return [proc.returncode for proc in procs]


def _kill(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _log(proc, tail=3000):
    return proc.log_path.read_text()[-tail:]


def _common(tmp_path):
    """A tiny run on tiny demo data; augmentation off (its random draws are per replica,
    so a worker's do not match the single process's second micro-batch); unequal class
    weights, so the loss divides by the weight sum of the whole global batch."""
    data = tmp_path / "data"
    if not data.is_dir():
        demo.write_demo_dataset(data, train_videos=2, val_videos=1, frames_per_video=20, seed=3)
    return ["--dataset=affwild2", f"--data_dir={data}", "--backbone=tiny", "--random_init",
            "--image_size=32", "--batch_size=8", "--micro_batches=2", "--noaugment",
            "--lr_head=0.05", "--lr_backbone=0.05", "--patience=0", "--eval_batch_size=64",
            "--log_every=2", "--seed=4", "--class_weights=1,2,3,4,5,6,7"]


def _checkpoint_tensors(workdir):
    path = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    return os.path.basename(path), {name: reader.get_tensor(name)
                                    for name in reader.get_variable_to_shape_map()}


def test_shards_reproduce_the_single_process_batches(tmp_path):
    """Worker w's batch k is positions [w*B/W, (w+1)*B/W) of the single process's batch k,
    from the file list and from decoded images, after a resume skip; the incomplete last
    global batch is dropped for every worker (41 images, B=16: worker 0 would otherwise
    get one more batch than worker 1 and wait for it forever). Exact."""
    demo.write_demo_dataset(tmp_path, train_videos=2, val_videos=1, frames_per_video=20, seed=3)
    files = sources.load_source("affwild2", str(tmp_path), "train")
    assert len(files) % 16 >= 8
    for images in (files, pipeline.DecodedImages(files, 32)):
        for skip in (0, 1):
            options = dict(image_size=32, seed=5, drop_remainder=True, skip_batches=skip)
            single = list(pipeline.make_dataset(images, 16, **options).as_numpy_iterator())
            shards = [list(pipeline.make_dataset(images, 16, shard=(w, 2), **options)
                           .as_numpy_iterator()) for w in range(2)]
            assert len(single) == len(shards[0]) == len(shards[1]) == len(files) // 16 - skip
            for k, batch in enumerate(single):
                for part in range(3):  # images, labels, weights
                    np.testing.assert_array_equal(
                        np.concatenate([shards[0][k][part], shards[1][k][part]]), batch[part])
    with pytest.raises(ValueError, match="count dividing batch_size=16"):
        pipeline.make_dataset(files, 16, shard=(0, 3))


def test_config_needs_tf_config_and_a_positive_timeout(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = train_config.TrainConfig(random_init=True, distribute="multi_worker")
    with pytest.raises(ValueError, match="TF_CONFIG environment variable, which is not set"):
        config.validate()
    monkeypatch.setenv("TF_CONFIG", "{}")
    config.validate()
    config.collective_timeout = 0
    with pytest.raises(ValueError, match="--collective_timeout must be > 0 seconds, got 0"):
        config.validate()


@pytest.mark.slow
def test_two_workers_equal_one_process(tmp_path):
    """From one checkpoint (4 updates of one process), two workers (global batch 8,
    micro_batches=2: one micro-batch of 4 each) and one process running both micro-batches
    resume for updates 5 and 6, the last batch of epoch 0 and the first of epoch 1 (40
    images): they end with the same weights. Tolerance, relative (L2 norm per tensor):
    trainable weights 1e-5, momentum buffers 3e-5. Float32: the workers add the two
    micro-batches' gradients and the global weight sum by an all-reduce, in other kernels
    than the process's loop (about 1e-8 after one update). A shared start, not 6 updates
    from scratch: training from scratch at lr 0.05 through BatchNorm over 4 images
    amplifies such rounding chaotically (one process with oneDNN on against off: 2e-5
    after 4 updates, 5e-3 after 5), which no tolerance separates from a real difference
    (other images, another loss scale: a momentum difference of 1e-2 and more at once).
    BatchNorm moving statistics are not compared (each worker updates its own from its
    own micro-batch, as under `mirrored`), nor the best score they lead to. Only the chief
    writes the workdir; the other worker's temporary folder is gone."""
    # A long collective timeout: the first update's tracing may take one process much
    # longer than the other here, and nothing is killed.
    common = _common(tmp_path) + ["--checkpoint_every=2", "--validate_every=3",
                                  "--collective_timeout=120"]
    first = _start(common + ["--max_updates=4", f"--workdir={tmp_path}/start"], tmp_path,
                   "start.log")
    try:
        assert _wait([first]) == [0], _log(first)
    finally:
        _kill([first])
    for name in ("single", "multi"):
        shutil.copytree(tmp_path / "start", tmp_path / name)
    common.append("--max_updates=6")
    single = _start(common + [f"--workdir={tmp_path}/single"], tmp_path, "single.log")
    workers = _start_workers(common + [f"--workdir={tmp_path}/multi",
                                       "--distribute=multi_worker"], tmp_path, "multi")
    try:
        codes = _wait([single] + workers)
    finally:
        _kill([single] + workers)
    assert codes == [0, 0, 0], "\n".join(_log(p) for p in [single] + workers)
    assert "2 replica(s)" in _log(workers[0], tail=10**6)
    for proc, name in zip([single] + workers, ["single", "multi", "multi"]):
        assert f"Resumed from {tmp_path / name / 'checkpoints' / 'ckpt-4'} at update 4" in \
            _log(proc, tail=10**6)

    name_single, single_tensors = _checkpoint_tensors(tmp_path / "single")
    name_multi, multi_tensors = _checkpoint_tensors(tmp_path / "multi")
    assert name_single == name_multi == "ckpt-6"
    assert single_tensors.keys() == multi_tensors.keys()
    worst, compared = {"weights": 0.0, "momentum": 0.0}, {"weights": 0, "momentum": 0}
    for key, value in single_tensors.items():
        if "moving_" in key or key.startswith(("best_score", "_CHECKPOINTABLE")):
            continue
        value = np.asarray(value)
        if value.dtype.kind != "f":
            np.testing.assert_array_equal(multi_tensors[key], value, err_msg=key)
            continue
        kind = "weights" if key.startswith("optimizer/_trainable_variables/") else "momentum"
        relative = float(np.linalg.norm(multi_tensors[key] - value)) / max(
            float(np.linalg.norm(value)), 1e-12)
        assert relative <= {"weights": 1e-5, "momentum": 3e-5}[kind], (key, relative)
        worst[kind] = max(worst[kind], relative)
        compared[kind] += 1
    assert compared["weights"] > 20 and compared["momentum"] > 20, compared
    print(f"largest relative differences: weights {worst['weights']:.2e}, momentum "
          f"{worst['momentum']:.2e}")

    assert json.loads((tmp_path / "multi" / "result.json").read_text())["updates"] == 6
    written = sorted(p.name for p in (tmp_path / "multi").iterdir())
    assert [n for n in written if not n.startswith("events.out")] == [
        "best_model.keras", "checkpoints", "flags.txt", "result.json"]
    events = [n for n in written if n.startswith("events.out")]
    assert len(events) == 2, events  # the first run's and the chief's
    assert not list((tmp_path / "tmp").iterdir())  # the non-chief's folder is removed


@pytest.mark.slow
def test_lost_worker_fails_the_survivor_in_bounded_time_and_rerun_resumes(tmp_path):
    """SIGKILL of worker 1 after the first checkpoint: worker 0 exits with code 1 within
    --collective_timeout plus a margin, with one error line naming worker 1; rerunning
    both commands resumes from the chief's last checkpoint and finishes."""
    args = _common(tmp_path) + [f"--workdir={tmp_path}/run", "--distribute=multi_worker",
                                "--max_updates=30", "--checkpoint_every=2",
                                "--validate_every=15",
                                f"--collective_timeout={COLLECTIVE_TIMEOUT}"]
    index = tmp_path / "run" / "checkpoints" / "checkpoint"
    workers = _start_workers(args, tmp_path, "first")
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while not index.exists():  # written last: the checkpoint is complete
            assert all(p.poll() is None for p in workers), "\n".join(map(_log, workers))
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        workers[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = _wait(workers[:1], timeout=COLLECTIVE_TIMEOUT + 60)[0]
        took = time.monotonic() - killed
    finally:
        _kill(workers)
    log = _log(workers[0], tail=10**6)
    assert code == 1, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("fer_tf.train: error:")]
    assert len(errors) == 1, log[-3000:]
    assert "worker 1 (127.0.0.1:" in errors[0]
    assert f"--collective_timeout={COLLECTIVE_TIMEOUT}s" in errors[0]
    assert "rerun every worker's command to resume from" in errors[0]
    print(f"survivor failed {took:.1f}s after the kill: {errors[0]}")
    partial = tmp_path / "run" / "result.json"  # none yet, or an unfinished one
    assert not partial.exists() or not json.loads(partial.read_text())["finished"]

    # The rerun traces the step again: a long timeout (it is not part of the checkpoint).
    again = _start_workers(args + ["--collective_timeout=120"], tmp_path, "rerun")
    try:
        codes = _wait(again)
    finally:
        _kill(again)
    assert codes == [0, 0], "\n".join(map(_log, again))
    for proc in again:
        assert "Resumed from " + str(tmp_path / "run" / "checkpoints" / "ckpt-") in \
            _log(proc, tail=10**6)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["finished"] and result["updates"] == 30


@pytest.mark.slow
def test_frozen_worker_fails_the_survivor_after_the_collective_timeout(tmp_path):
    """SIGSTOP of worker 1 after the first checkpoint: its connections stay open but it
    answers nothing, so only a timeout can end worker 0's wait: TensorFlow's coordination
    service missing its heartbeats (about 10 s) or --collective_timeout, whichever comes
    first. Worker 0 exits with code 1 within the timeout plus a margin (measured 26 s,
    most of it the process shutting down), naming worker 1."""
    args = _common(tmp_path) + [f"--workdir={tmp_path}/run", "--distribute=multi_worker",
                                "--max_updates=1000", "--checkpoint_every=2",
                                "--validate_every=1000",
                                f"--collective_timeout={COLLECTIVE_TIMEOUT}"]
    index = tmp_path / "run" / "checkpoints" / "checkpoint"
    workers = _start_workers(args, tmp_path, "frozen")
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while not index.exists():
            assert all(p.poll() is None for p in workers), "\n".join(map(_log, workers))
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        workers[1].send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        code = _wait(workers[:1], timeout=COLLECTIVE_TIMEOUT + 60)[0]
        took = time.monotonic() - frozen
    finally:
        _kill(workers)  # SIGKILL ends a stopped process too
    log = _log(workers[0], tail=10**6)
    assert code == 1, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("fer_tf.train: error:")]
    assert len(errors) == 1 and "worker 1 (127.0.0.1:" in errors[0], log[-3000:]
    print(f"survivor failed {took:.1f}s after worker 1 froze: {errors[0]}")
