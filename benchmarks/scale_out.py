r"""Images/s of the training input path locally and on 1 and 2 tf.data service workers.

    python benchmarks/scale_out.py [--images=auto|demo|fer2013] [--num_images=2000]
        [--batch_size=64] [--passes=2]

One run, this machine: `fer_tf.data.pipeline.make_dataset` (read + decode + shuffle +
batch uint8, the training input path) over the same files, consumed as fast as
possible (no train step), with
- 0 workers: local tf.data (the default, ``--data_service=''``);
- 1 and 2 workers: a dispatcher in this process and ``python -m fer_tf.data.service
  --worker`` processes on this machine, read through `fer_tf.data.service_input`
  (``--data_service=grpc://...``: decode on the workers, re-batch here).
Columns: images/s (wall clock) and images per CPU-second of this, the trainer's,
process: what scale-out buys is the trainer's CPU, freed for the train step (on a
shared 2-core machine more workers cannot add cores). FER2013 (48x48 gray images) is read
from $FER_TF_SHARED_DATA/fer2013 if present, else the demo data (112x112) is written to
--work_dir. Then (``--train_updates`` > 0) training rows: `python -m fer_tf.train` on the
demo data as 1 process and as 2 ``--distribute=multi_worker`` processes on loopback, the
median of the loop's logged images/s. Ends with the ratio lines.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

flags.DEFINE_enum("images", "auto", ["auto", "demo", "fer2013"],
                  "Input files: fer2013 (from $FER_TF_SHARED_DATA/fer2013, default "
                  "../shared/data), demo (written to --work_dir), auto: fer2013 if present.")
flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(), "fer_tf_scale_out_bench"),
                    "Where the demo data is written (reused between runs).")
flags.DEFINE_integer("num_images", 2000, "Images per pass.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("passes", 2, "Timed passes (after one warm-up pass).")
flags.DEFINE_integer("train_updates", 60, "Updates of each training row (0: no training rows).")
flags.DEFINE_integer("train_batch", 32, "Global batch of the training rows.")
FLAGS = flags.FLAGS


def _fer2013_root():
    shared = os.environ.get("FER_TF_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    return pathlib.Path(shared) / "fer2013"


def _input_files():
    """(LabelledImages, image size, description) of the files every row reads."""
    from fer_tf.data import demo
    from fer_tf.data.examples import LabelledImages
    use_fer = FLAGS.images == "fer2013" or (
        FLAGS.images == "auto" and (_fer2013_root() / "train").is_dir())
    if use_fer:
        paths = sorted(p for p in (_fer2013_root() / "train").glob("*/*")
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not paths:
            raise FileNotFoundError(f"no FER2013 images under {_fer2013_root() / 'train'}")
        step = max(1, len(paths) // FLAGS.num_images)
        paths, size, name = paths[::step][:FLAGS.num_images], 48, "FER2013 48x48 gray"
    else:
        root = pathlib.Path(FLAGS.work_dir) / "demo"
        demo.write_demo_dataset(root)  # idempotent: reused between runs
        paths = sorted((root / "cropped_aligned").glob("*/*.jpg"))[:FLAGS.num_images]
        size, name = 112, "demo 112x112"
    return LabelledImages([str(p) for p in paths], [i % 7 for i in range(len(paths))]), size, name


def _rate(make_epoch):
    """(images/s, images per CPU-second of this process) over --passes fresh epochs."""
    for _ in make_epoch(0):  # warm-up: file cache, workers' first job
        pass
    n, start, cpu0 = 0, time.perf_counter(), time.process_time()
    for epoch in range(1, FLAGS.passes + 1):
        for images, _, _ in make_epoch(epoch):
            images.numpy()
            n += int(images.shape[0])
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu0)


class _WorkerProcess:
    """``python -m fer_tf.data.service --worker`` on a free port, until stop()."""

    def __init__(self, dispatcher_address):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get(
            "PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fer_tf.data.service", "--worker", "--port=0",
             f"--dispatcher_address={dispatcher_address}"], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                        daemon=True)
        self._reader.start()

    def wait_serving(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any("serving at" in line for line in list(self.lines)):
                return
            time.sleep(0.2)
        raise RuntimeError("worker did not start: " + "".join(self.lines)[-1000:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


def _service_rate(files, size, num_workers):
    """_rate through a fresh dispatcher in this process and ``num_workers`` worker processes."""
    import tensorflow as tf
    from fer_tf.data import pipeline, service_input
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    workers = []
    try:
        for _ in range(num_workers):
            workers.append(_WorkerProcess(dispatcher.target.split("://")[1]))
        for worker in workers:
            worker.wait_serving()
        serve = service_input.ServedInput(dispatcher.target)
        return _rate(lambda epoch: pipeline.make_dataset(
            files, FLAGS.batch_size, image_size=size, seed=epoch, drop_remainder=True,
            serve=serve))
    finally:
        for worker in workers:
            worker.stop()
        dispatcher.stop()


# ---------------------------------------------------------------------------------------
# Training rows: `python -m fer_tf.train` on the demo data (tiny SE-ResNet, global batch
# --train_batch) as 1 process and as 2 multi-worker processes on loopback
# (--distribute=multi_worker, TF_CONFIG). The rate is the median of the loop's own
# "images/s" log lines after the first (it excludes start-up, tracing and validation).


def _free_ports(count):
    import socket
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _train_args(workdir):
    return ["--dataset=demo", f"--data_dir={FLAGS.work_dir}/demo", f"--workdir={workdir}",
            "--backbone=tiny", "--random_init", "--image_size=64",
            f"--batch_size={FLAGS.train_batch}", "--micro_batches=2",
            f"--max_updates={FLAGS.train_updates}", f"--validate_every={FLAGS.train_updates}",
            f"--checkpoint_every={FLAGS.train_updates}", "--log_every=10", "--class_weights=none"]


def _logged_rate(log_text):
    import re
    import statistics
    rates = [float(m) for m in re.findall(r"([0-9.]+) images/s ETA", log_text)]
    if len(rates) < 2:
        raise RuntimeError(f"no training rate in the log:\n{log_text[-2000:]}")
    return statistics.median(rates[1:])


def _train_rate(workers):
    """Images/s of one training job with ``workers`` processes (1: no cluster)."""
    import json
    work = tempfile.mkdtemp(prefix="fer_tf_scale_train_")
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(workers)]
    procs = []
    try:
        for index in range(workers):
            env = dict(os.environ)
            args = _train_args(os.path.join(work, "run"))
            if workers > 1:
                env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses},
                                               "task": {"type": "worker", "index": index}})
                args.append("--distribute=multi_worker")
            log = open(os.path.join(work, f"worker{index}.log"), "w")
            procs.append((subprocess.Popen([sys.executable, "-m", "fer_tf.train"] + args,
                                           cwd=str(REPO), env=env, stdout=log,
                                           stderr=subprocess.STDOUT), log))
        for proc, log in procs:
            if proc.wait(timeout=1800) != 0:
                raise RuntimeError(f"training failed; see {log.name}")
        with open(os.path.join(work, "worker0.log")) as f:
            return _logged_rate(f.read())
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
        shutil.rmtree(work, ignore_errors=True)


def training_rows(files, size):
    """Rows of training throughput with 1 process and 2 multi-worker processes."""
    del files, size
    if not FLAGS.train_updates:
        return []
    from fer_tf.data import demo
    demo.write_demo_dataset(os.path.join(FLAGS.work_dir, "demo"))
    one, two = _train_rate(1), _train_rate(2)
    note = f"tiny SE-ResNet, demo 64x64, global batch {FLAGS.train_batch}"
    return [("training, 1 process", (one, None), note),
            ("training, 2 workers (loopback)", (two, None), note + ", 2 processes")]


# ---------------------------------------------------------------------------------------


def main(argv):
    del argv
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # a CPU benchmark even on a GPU machine
    from fer_tf.data import pipeline

    files, size, name = _input_files()
    print(f"{len(files)} {name} images, batch {FLAGS.batch_size}, {os.cpu_count()} CPUs, "
          f"{FLAGS.passes} passes, tf {tf.__version__}")
    rows = []

    def add(label, rate, note):
        rows.append((label, rate, note))
        print(f"  measured {label}: {rate}", flush=True)

    local = _rate(lambda epoch: pipeline.make_dataset(
        files, FLAGS.batch_size, image_size=size, seed=epoch, drop_remainder=True))
    add("local tf.data (0 workers)", local, "read + decode + shuffle + batch in this process")
    one = _service_rate(files, size, 1)
    add("tf.data service, 1 worker", one, "decode on a worker process, re-batch here; exact")
    two = _service_rate(files, size, 2)
    add("tf.data service, 2 workers", two, "same, order approximate (docs/data_service.md)")
    for row in training_rows(files, size):
        add(*row)

    print(f"\n{'input path':32s} {'images/s':>9s} {'img/CPU-s':>9s}  notes")
    for label, rate, note in rows:
        cols = "".join(f" {v:9.0f}" if v is not None else f" {'-':>9s}"
                       for v in (rate if rate is not None else (None, None)))
        print(f"{label:32s}{cols}  {note}")
    print("(img/CPU-s: images per CPU-second of the trainer's process only: workers' CPU "
          "is spent elsewhere)")
    print(f"trainer CPU per image, 1 worker / local: {local[1] / one[1]:.2f}x as much; "
          f"2 workers / local: {local[1] / two[1]:.2f}x")
    print(f"ratio 1 worker / local: {one[0] / local[0]:.2f}")
    print(f"ratio 2 workers / 1 worker: {two[0] / one[0]:.2f}")
    print(f"ratio 2 workers / local: {two[0] / local[0]:.2f}")
    trained = {label: rate for label, rate, _ in rows if label.startswith("training")}
    if trained:
        first, second = trained.values()
        print(f"ratio training 2 workers / 1 process: {second[0] / first[0]:.2f}")


if __name__ == "__main__":
    app.run(main)
