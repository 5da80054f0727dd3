r"""Runs a tf.data service dispatcher or worker (TensorFlow's own servers, no RPC of ours).

    python -m fer_tf.data.service --dispatcher --port=5050 [--work_dir=DIR]
    python -m fer_tf.data.service --worker --dispatcher_address=HOST:5050 --port=5051 \
        [--worker_host=THIS_HOST]

Each blocks until Ctrl-C or SIGTERM, then stops its server and exits 0. Training sends
its input pipeline there with ``python -m fer_tf.train ... --data_service=grpc://HOST:5050``
(docs/data_service.md: what stays exact, what does not). Workers read the image files
themselves: they need the same paths as the trainer (a shared file system).
"""

import signal
import threading

import tensorflow as tf
from absl import app, flags, logging

from fer_tf import cli
from fer_tf.data import service_input

FLAGS = flags.FLAGS

# How often the waiting main thread wakes up: Python runs signal handlers only between
# bytecodes, and a server's join() blocks in C++ forever.
_POLL_SECONDS = 0.5


def start_dispatcher(port: int, work_dir: str = ""):
    """A started `tf.data.experimental.service.DispatchServer` on ``port`` (0: any free).

    With ``work_dir`` the dispatcher journals its state there (fault-tolerant mode), so a
    restarted dispatcher recovers its registered datasets and jobs.
    """
    service = tf.data.experimental.service
    return service.DispatchServer(service.DispatcherConfig(
        port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir)))


def start_worker(dispatcher_address: str, port: int, worker_host: str = "localhost"):
    """A started `tf.data.experimental.service.WorkerServer` registered at the dispatcher.

    ``worker_host`` is the name the dispatcher hands to trainers for reaching this worker
    (TF's default, localhost, only works when trainer and worker share a machine).
    """
    service = tf.data.experimental.service
    return service.WorkerServer(service.WorkerConfig(
        dispatcher_address=_without_protocol(dispatcher_address),
        worker_address=f"{worker_host}:%port%", port=port))


def _without_protocol(address: str) -> str:
    """``grpc://host:port`` -> ``host:port`` (WorkerConfig takes the bare address)."""
    return address.split("://", 1)[-1]


def serve_until_signal(server, description: str):
    """Logs one line with the server's address, waits for SIGINT/SIGTERM, stops the server."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    # _address: TF's only accessor of the bound port (port 0 picks a free one).
    logging.info("tf.data service %s serving at %s (Ctrl-C or SIGTERM stops it)", description,
                 server._address)  # pylint: disable=protected-access
    try:
        while not stop.wait(_POLL_SECONDS):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    logging.info("tf.data service %s stopped", description)


def define_flags():
    """Flags live here, defined only when run as a program."""
    flags.DEFINE_bool("dispatcher", False, "Run a dispatcher (one per cluster).")
    flags.DEFINE_bool("worker", False, "Run a worker (as many as there are spare CPUs).")
    flags.DEFINE_integer("port", None, "Port to serve on (0: any free port); default 5050 for "
                         "--dispatcher, 5051 for --worker.")
    flags.DEFINE_string("work_dir", "", "--dispatcher: journal its state here so a restart "
                        "recovers it ('' = no journal).")
    flags.DEFINE_string("dispatcher_address", "", "--worker: the dispatcher's HOST:PORT "
                        "(grpc:// prefix allowed).")
    flags.DEFINE_string("worker_host", "localhost", "--worker: the host name trainers reach "
                        "this worker by (set it when they run on another machine).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.dispatcher == FLAGS.worker:
        raise app.UsageError("pass exactly one of --dispatcher and --worker")
    if FLAGS.port is not None and not 0 <= FLAGS.port < 65536:
        raise app.UsageError(f"--port must be in 0..65535, got {FLAGS.port}")
    if FLAGS.dispatcher:
        if FLAGS.dispatcher_address:
            raise app.UsageError("--dispatcher_address is for --worker; a dispatcher uses --port")
        port = 5050 if FLAGS.port is None else FLAGS.port
        serve_until_signal(start_dispatcher(port, FLAGS.work_dir), "dispatcher")
        return
    if not FLAGS.dispatcher_address:
        raise app.UsageError("--worker needs --dispatcher_address=HOST:PORT of the dispatcher")
    port = 5051 if FLAGS.port is None else FLAGS.port
    # TF's worker retries registering for an hour without a word: fail fast instead.
    service_input.check_reachable(FLAGS.dispatcher_address)
    serve_until_signal(start_worker(FLAGS.dispatcher_address, port, FLAGS.worker_host),
                       f"worker (dispatcher {FLAGS.dispatcher_address})")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.data.service")
