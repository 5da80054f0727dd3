"""The training loop: updates, validation, best model, checkpoints, resume, signals.

- `train_loop`: updates, logging, TensorBoard, validation, best model, early stopping,
  checkpoints, resume, SIGTERM/Ctrl-C, NaN checks, result.json.
- `train_and_evaluate(config, workdir)`: builds data, model, optimiser and strategy from
  a `fer_tf.train_config.TrainConfig` and runs `train_loop` (``python -m fer_tf.train``
  calls it).

The settings live in `fer_tf.train_config`, the update itself in `fer_tf.train_step`,
scoring in `fer_tf.validation`. Only the model contract is assumed:
``model(images, training=True) -> logits`` and a layer named ``"head"`` (learning rate
``lr_head``; everything else is the backbone).
"""

import dataclasses
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fer_tf import atomic, compute_precision, distill, optim
from fer_tf import model as model_lib
from fer_tf import validation as validation_lib
from fer_tf.classes import CLASS_NAMES
from fer_tf.data import demo, examples, pipeline, records, service_input, sources
from fer_tf.train_config import TrainConfig, resolve_class_weights
from fer_tf.train_step import make_train_step

RESULT_FILE = "result.json"
BEST_MODEL_FILE = model_lib.BEST_MODEL_FILE
CHECKPOINT_DIR = "checkpoints"


# ---------------------------------------------------------------------------------------
# Files and signals.


def write_json_atomic(path: str, payload: Dict):
    """Writes JSON to ``path`` atomically (sorted keys)."""
    atomic.write_json(path, payload, sort_keys=True)


def save_model_atomic(model: keras.Model, path: str):
    """Saves a ``.keras`` model via a temporary file and os.replace."""
    with atomic.output_path(path, ".keras") as tmp:
        model.save(tmp)


class _StopRequest:
    """Turns SIGTERM / the first Ctrl-C into a flag the loop checks between updates.

    Saving happens at a step boundary, so a checkpoint never holds a half-applied
    update. A second Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        logging.warning("%s received: finishing this update, then writing a checkpoint",
                        self.signal_name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class WorkerLost(RuntimeError):
    """A multi-worker run lost a worker (or it timed out); rerun every worker to resume."""


class TrainingInterrupted(Exception):
    """Raised after SIGTERM/SIGINT once the checkpoint is written; rerun to resume."""

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        super().__init__(f"{signal_name} at update {step}: checkpoint {checkpoint} written; "
                         "rerun the same command to resume")
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class LoopData:
    """What the loop needs from the input pipeline.

    Attributes:
      train_epoch: ``(epoch, skip_batches) -> tf.data.Dataset`` of global batches
        ``(uint8 images, int32 labels, float32 weights)`` of that epoch without its first
        ``skip_batches`` batches; finite, all of the same size, and in the same order
        every time it is called with the same epoch (the resume relies on it). Under
        --distribute=multi_worker it is called as ``(epoch, skip_batches, (worker,
        workers))`` and returns that worker's share of each global batch (see
        `fer_tf.data.pipeline.make_dataset`'s ``shard``).
      validation: ``() -> tf.data.Dataset`` of ``(images, labels, ...)`` batches.
      images_per_epoch: for the log's epoch fraction (optional).
    """

    train_epoch: Callable[[int, int], tf.data.Dataset]
    validation: Callable[[], tf.data.Dataset]
    images_per_epoch: int = 0


def _state_variables():
    def var(name, value, dtype):
        return tf.Variable(value, dtype=dtype, trainable=False, name=name)
    return {
        "step": var("step", 0, tf.int64),
        "epoch": var("epoch", 0, tf.int64),
        "batch_in_epoch": var("batch_in_epoch", 0, tf.int64),
        "best_score": var("best_score", -1.0, tf.float64),
        "best_step": var("best_step", -1, tf.int64),
        "bad_validations": var("bad_validations", 0, tf.int64),
        "last_validated": var("last_validated", -1, tf.int64),
        "stopped_early": var("stopped_early", False, tf.bool),
    }


def _remove_interrupted_writes(workdir: str):
    """Deletes what a killed earlier run left half-written: temporary best-model/result
    files of `fer_tf.atomic` and TensorFlow's ``ckpt-N_temp`` checkpoint folders."""
    removed = []
    for name in (BEST_MODEL_FILE, RESULT_FILE):
        removed += atomic.remove_leftovers(os.path.join(workdir, name))
    checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.isdir(checkpoints):
        for name in os.listdir(checkpoints):
            full = os.path.join(checkpoints, name)
            if name.startswith("ckpt-") and name.endswith("_temp") and os.path.isdir(full):
                shutil.rmtree(full)
                removed.append(full)
    if removed:
        logging.info("removed %d leftovers of an interrupted run: %s", len(removed),
                     ", ".join(os.path.basename(p) for p in removed))


def random_state_variables(model: keras.Model) -> list:
    """The state variables of every `keras.random.SeedGenerator` inside ``model``."""
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):  # pylint: disable=protected-access
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator):
                found.append(value.state)
    return found


def _result_payload(state, best_scores, class_names, finished, reason):
    """result.json: the run's position and its best validation scores."""
    payload = {
        "best_step": int(state["best_step"].numpy()),
        "updates": int(state["step"].numpy()),
        "finished": finished,
        "stop_reason": reason,
    }
    if best_scores is not None:
        payload.update({
            "val_abaw_score": best_scores["abaw_score"],
            "val_f1": best_scores["f1"],
            "val_accuracy": best_scores["accuracy"],
            "val_per_class_f1": dict(zip(class_names, best_scores["per_class_f1"])),
            "val_num_images": best_scores["num_images"],
        })
    return payload


def _best_scores_from_result(path) -> Optional[Dict]:
    """The inverse of `_result_payload` for the scores: a resumed run's best so far."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        previous = json.load(f)
    if "val_abaw_score" not in previous:
        return None
    return {"abaw_score": previous["val_abaw_score"], "f1": previous["val_f1"],
            "accuracy": previous["val_accuracy"],
            "per_class_f1": list(previous["val_per_class_f1"].values()),
            "num_images": previous.get("val_num_images", 0)}


def _write_validation_summaries(writer, scores, class_names, step):
    with writer.as_default():
        validation_lib.summary_scalar("val/abaw_score", scores["abaw_score"], step)
        validation_lib.summary_scalar("val/f1", scores["f1"], step)
        validation_lib.summary_scalar("val/accuracy", scores["accuracy"], step)
        for name, f1 in zip(class_names, scores["per_class_f1"]):
            validation_lib.summary_scalar(f"val/f1_{name}", f1, step)
        validation_lib.summary_image(
            "val/confusion_matrix", validation_lib.confusion_matrix_image(
                scores["confusion_matrix"], class_names, f"validation, update {step}")[0],
            step)
    writer.flush()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a `tf.distribute.MultiWorkerMirroredStrategy` (one process per worker)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker run."""
    return strategy.extended.should_checkpoint


def _broadcast_from_chief(strategy) -> Callable[[float], float]:
    """``value -> the chief's value`` on every worker (an all-reduce to which only global
    replica 0, on the chief, contributes).

    Each worker's BatchNorm statistics come from its own micro-batches, so the workers'
    validation scores differ slightly; deciding on the chief's keeps the best step and
    early stopping identical everywhere, and the workers in step.
    """
    @tf.function
    def broadcast(value):
        def replica_fn(value):
            ctx = tf.distribute.get_replica_context()
            first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), value.dtype)
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value * first)
        return strategy.run(replica_fn, args=(value,))

    def chief_value(value):
        result = broadcast(tf.constant(value, tf.float64))
        return float(strategy.experimental_local_results(result)[0])
    return chief_value


def _worker_batches(data: LoopData, epoch: int, skip: int, context, batch_size: int):
    """One worker's dataset of an epoch: its share of each global batch (read and decoded
    by this worker only), in slices of one replica's batch."""
    dataset = data.train_epoch(epoch, skip, (context.input_pipeline_id,
                                             context.num_input_pipelines))
    per_replica = context.get_per_replica_batch_size(batch_size)
    if per_replica * context.num_input_pipelines != batch_size:
        # Several replicas on this worker: tf.distribute hands them consecutive batches,
        # i.e. consecutive slices of the worker's share, in the global replica order.
        dataset = dataset.rebatch(per_replica, drop_remainder=True)
    return dataset


class _Run:
    """One training run's moving parts: the step, the checkpointed state, the outputs.

    Under --distribute=multi_worker every worker runs one, in lockstep; only the chief
    (``outdir == workdir``) writes into the workdir, the others into ``outdir``, a
    temporary folder (saving is collective, so they must save too).
    """

    def __init__(self, model, sgd, data: LoopData, config: TrainConfig, workdir: str,
                 strategy, class_names, outdir: str, loss_sum_fn=None):
        self.model, self.sgd, self.data, self.config = model, sgd, data, config
        self.workdir, self.strategy, self.class_names = workdir, strategy, class_names
        self.chief = outdir == workdir
        self.train_step = make_train_step(model, sgd, config.micro_batches, strategy,
                                          jit_compile=config.xla,
                                          label_smoothing=config.label_smoothing,
                                          loss_sum_fn=loss_sum_fn)
        self.predict_fn = validation_lib.make_predict_fn(model)
        self.state = _state_variables()
        # The model's random state (augmentation seed generators): tf.train.Checkpoint
        # does not reach it through the Keras model, so without this a resumed run would
        # draw different augmentations than the uninterrupted one.
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=sgd.optimizer, random_state=random_state_variables(model),
            **self.state)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(outdir, CHECKPOINT_DIR),
            max_to_keep=config.max_checkpoints if self.chief else 1)
        # Every worker resumes from the chief's checkpoints (on a cluster the workdir is
        # a shared filesystem or GCS).
        self.chief_checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
        self.saved_step = -1  # the update of this process's last save or restore
        self._restore()
        self.writer = tf.summary.create_file_writer(outdir)
        self.result_path = os.path.join(workdir, RESULT_FILE)
        self.chief_value = (_broadcast_from_chief(strategy) if is_multi_worker(strategy)
                            else float)
        self.best_scores = _best_scores_from_result(self.result_path)
        self.interval = {"loss": 0.0, "grad_norm": 0.0, "n": 0, "start": time.time(),
                         "images": 0}

    def last_checkpoint(self) -> Optional[str]:
        """The chief's last complete checkpoint (what a rerun resumes from), or None."""
        return tf.train.latest_checkpoint(self.chief_checkpoints)

    def _restore(self):
        latest = self.last_checkpoint()
        if not latest:
            logging.info("No checkpoint in %s: starting from update 0", self.chief_checkpoints)
            return
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        self.saved_step = self.step
        logging.info("Resumed from %s at update %d (epoch %d, batch %d)", latest, self.step,
                     int(self.state["epoch"].numpy()), int(self.state["batch_in_epoch"].numpy()))

    @property
    def step(self) -> int:
        return int(self.state["step"].numpy())

    def done(self) -> bool:
        return self.step >= self.config.max_updates or bool(self.state["stopped_early"].numpy())

    def save(self, reason: str) -> str:
        """Saves a checkpoint (every worker: saving is collective); returns the chief's path."""
        path = self.manager.save(checkpoint_number=self.step)
        self.saved_step = self.step
        logging.info("Checkpoint %s (%s)", path, reason)
        return os.path.join(self.chief_checkpoints, os.path.basename(path))

    def validate(self):
        """Scores the model, logs it, and keeps it if it is the best so far."""
        step, state = self.step, self.state
        start = time.time()
        scores = validation_lib.evaluate(self.predict_fn, self.data.validation(),
                                         self.config.num_classes)
        logging.info("Validation at update %d (%d images, %.1fs): ABAW %.4f, F1 %.4f, "
                     "accuracy %.4f\n%s", step, scores["num_images"], time.time() - start,
                     scores["abaw_score"], scores["f1"], scores["accuracy"],
                     validation_lib.per_class_table(scores, self.class_names))
        _write_validation_summaries(self.writer, scores, self.class_names, step)
        state["last_validated"].assign(step)
        score = self.chief_value(scores["abaw_score"])
        if score > state["best_score"].numpy():
            state["best_score"].assign(score)
            state["best_step"].assign(step)
            state["bad_validations"].assign(0)
            self.best_scores = scores
            if self.chief:
                save_model_atomic(self.model, os.path.join(self.workdir, BEST_MODEL_FILE))
                write_json_atomic(self.result_path, _result_payload(
                    state, scores, self.class_names, False, "running"))
                logging.info("New best ABAW %.4f at update %d: saved %s", score, step,
                             BEST_MODEL_FILE)
            return
        state["bad_validations"].assign_add(1)
        logging.info("No improvement for %d validation(s) (best %.4f at update %d)",
                     int(state["bad_validations"].numpy()),
                     float(state["best_score"].numpy()), int(state["best_step"].numpy()))
        if self.config.patience and state["bad_validations"].numpy() >= self.config.patience:
            state["stopped_early"].assign(True)

    def train_epoch(self, stop):
        """Runs the current epoch from its saved position until it ends or the run does."""
        epoch = int(self.state["epoch"].numpy())
        skip = int(self.state["batch_in_epoch"].numpy())
        if is_multi_worker(self.strategy):
            # Each worker reads only its share; TF must not shard it again.
            dataset = self.strategy.distribute_datasets_from_function(
                lambda context: _worker_batches(self.data, epoch, skip, context,
                                                self.config.batch_size))
        else:
            dataset = self.data.train_epoch(epoch, skip)
            if self.strategy.num_replicas_in_sync > 1:
                dataset = self.strategy.experimental_distribute_dataset(dataset)
        batches = skip
        for images, labels, weights in dataset:
            out = self.train_step(images, labels, weights)
            self.state["step"].assign_add(1)
            self.state["batch_in_epoch"].assign_add(1)
            batches += 1
            self._after_update(out, epoch, batches, stop)
            if self.done():
                return
        if batches == 0:
            raise ValueError(
                f"the training data gave no batch of {self.config.batch_size} images in "
                f"epoch {epoch}: use a smaller --batch_size or more data")
        self.state["epoch"].assign_add(1)
        self.state["batch_in_epoch"].assign(0)

    def _after_update(self, out, epoch, batches, stop):
        """NaN check, logging, validation and checkpoints after one update."""
        config, interval, step = self.config, self.interval, self.step
        loss = float(out["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at update {step} (epoch {epoch}, batch {batches - 1}); last "
                f"good checkpoint: {self.last_checkpoint() or 'none (no checkpoint yet)'}"
                ". Lower --lr_head/--lr_backbone, check the data and class weights, or use "
                "--precision=float32; rerunning resumes from that checkpoint")
        interval["loss"] += loss
        interval["grad_norm"] += float(out["grad_norm"])
        interval["n"] += 1
        interval["images"] += config.batch_size
        if step % config.log_every == 0 or step == config.max_updates:
            _log_interval(self.writer, interval, step, config, *self.sgd.learning_rates(),
                          epoch, self.data.images_per_epoch, batches)
            interval.update(loss=0.0, grad_norm=0.0, n=0, images=0, start=time.time())
        paused = time.time()
        validated = step % config.validate_every == 0
        if validated:
            self.validate()
        if step % config.checkpoint_every == 0 or validated:
            self.save("periodic")
        # images/s measures training only, not validation or checkpointing.
        interval["start"] += time.time() - paused
        if stop.signal_name:
            path = self.save(stop.signal_name)
            raise TrainingInterrupted(stop.signal_name, step, path)

    def finish(self) -> Dict:
        """A last validation and checkpoint if the final update lacks them; result.json."""
        step = self.step
        if int(self.state["last_validated"].numpy()) != step:
            self.validate()
        if self.saved_step != step:
            self.save("final")
        reason = "early_stopping" if bool(self.state["stopped_early"].numpy()) else "max_updates"
        payload = _result_payload(self.state, self.best_scores, self.class_names, True, reason)
        if self.chief:
            write_json_atomic(self.result_path, payload)
        logging.info("Finished (%s) after %d updates: best ABAW %.4f at update %d", reason,
                     step, payload.get("val_abaw_score", float("nan")), payload["best_step"])
        return payload


def train_loop(model: keras.Model, sgd: optim.PaperSGD, data: LoopData, config: TrainConfig,
               workdir: str, strategy: Optional[tf.distribute.Strategy] = None,
               class_names: Sequence[str] = CLASS_NAMES,
               loss_sum_fn: Optional[Callable] = None) -> Dict:
    """Trains until ``max_updates`` or early stopping; resumes from ``workdir`` if possible.

    Uses from ``config``: batch_size, micro_batches, validate_every, checkpoint_every,
    max_updates, patience, log_every, xla, label_smoothing, max_checkpoints, num_classes.
    ``loss_sum_fn``: the train step's loss (`fer_tf.train_step.make_train_step`; default
    the weighted cross-entropy), e.g. `fer_tf.distill.make_distillation_loss`.

    Writes into ``workdir``: ``checkpoints/`` (model, optimiser, step, epoch and batch
    position, best score, augmentation random state; atomic), TensorBoard events,
    ``best_model.keras`` and ``result.json`` (rewritten at each improvement and at the end).
    Under a `tf.distribute.MultiWorkerMirroredStrategy` only the chief writes them; the
    other workers resume from the chief's checkpoints and write theirs into a temporary
    folder that is removed at the end.

    Returns:
      The result.json payload.

    Raises:
      FloatingPointError: a non-finite loss, naming the update and last good checkpoint.
      TrainingInterrupted: after SIGTERM/SIGINT, once a checkpoint is written.
      WorkerLost: multi-worker only: a peer died or a reduction timed out.
    """
    strategy = strategy or tf.distribute.get_strategy()
    os.makedirs(workdir, exist_ok=True)
    chief = is_chief(strategy)
    if chief:
        _remove_interrupted_writes(workdir)
    outdir = workdir if chief else tempfile.mkdtemp(prefix="fer_tf_worker_")
    run = None
    try:
        with strategy.scope():
            sgd.build(model.trainable_variables)
        run = _Run(model, sgd, data, config, workdir, strategy,
                   tuple(class_names)[: config.num_classes], outdir, loss_sum_fn)
        with _StopRequest() as stop:
            while not run.done():
                run.train_epoch(stop)
            return run.finish()
    except _LOST_PEER_ERRORS as e:
        if not is_multi_worker(strategy):
            raise
        raise WorkerLost(_lost_worker_message(e, strategy, config, run)) from e
    finally:
        if run is not None:
            run.writer.close()
        if not chief:
            shutil.rmtree(outdir, ignore_errors=True)


# What a collective raises when a peer died (Unavailable, or Aborted/Cancelled once the
# collectives were aborted) or did not answer in time (DeadlineExceeded).
_LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                     tf.errors.AbortedError, tf.errors.CancelledError)


def _unreachable_peers(strategy, timeout_ms: int = 2000) -> list:
    """The other workers of the cluster that do not answer TF's collective health check."""
    # The check MultiWorkerMirroredStrategy's own health thread runs (TF has no public
    # name for it); it only names the lost peer for the error message.
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec()
    down = []
    for job in ("chief", "worker"):
        for task in range(spec.num_tasks(job) if job in spec.jobs else 0):
            if (job, task) == (resolver.task_type, resolver.task_id):
                continue
            try:
                context.context().check_collective_ops_peer_health(
                    f"/job:{job}/replica:0/task:{task}", timeout_in_ms=timeout_ms)
            except tf.errors.OpError:
                down.append(f"{job} {task} ({spec.task_address(job, task)})")
    return down


def _lost_worker_message(error, strategy, config: TrainConfig, run) -> str:
    """One line: who is lost, when, and how to resume."""
    resolver = strategy.cluster_resolver
    me = f"{resolver.task_type} {resolver.task_id}"
    step = f"at update {run.step}" if run is not None else "before the first update"
    latest = run.last_checkpoint() if run is not None else None
    resume = (f"rerun every worker's command to resume from {latest}" if latest else
              "rerun every worker's command (there is no checkpoint yet: it starts over)")
    down = _unreachable_peers(strategy)
    if down:
        return (f"{me} lost the multi-worker run {step}: {', '.join(down)} stopped or is "
                f"unreachable ({type(error).__name__}; the others fail within "
                f"--collective_timeout={config.collective_timeout:g}s); {resume}")
    return (f"{me}: a cross-worker reduction {step} did not complete within "
            f"--collective_timeout={config.collective_timeout:g}s ({type(error).__name__}) "
            f"although every worker answers: one is stalled or much slower (raise "
            f"--collective_timeout); {resume}")


def _log_interval(writer, interval, step, config, lr_head, lr_backbone, epoch,
                  images_per_epoch, batches_this_epoch):
    elapsed = max(time.time() - interval["start"], 1e-9)
    n = max(interval["n"], 1)
    loss = interval["loss"] / n
    grad_norm = interval["grad_norm"] / n
    images_per_second = interval["images"] / elapsed
    eta = (config.max_updates - step) * config.batch_size / max(images_per_second, 1e-9)
    epoch_fraction = ""
    if images_per_epoch:
        epoch_fraction = f" ({epoch + batches_this_epoch * config.batch_size / images_per_epoch:.2f} epochs)"
    logging.info("update %d/%d%s loss %.4f lr head %.2g backbone %.2g grad_norm %.3g "
                 "%.1f images/s ETA %s", step, config.max_updates, epoch_fraction, loss,
                 lr_head, lr_backbone, grad_norm, images_per_second, _format_eta(eta))
    with writer.as_default():
        validation_lib.summary_scalar("train/loss", loss, step)
        validation_lib.summary_scalar("train/learning_rate_head", lr_head, step)
        validation_lib.summary_scalar("train/learning_rate_backbone", lr_backbone, step)
        validation_lib.summary_scalar("train/images_per_second", images_per_second, step)
        validation_lib.summary_scalar("train/grad_norm", grad_norm, step)


def _format_eta(seconds):
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# ---------------------------------------------------------------------------------------
# From a config: data, model, strategy.


def _read_split(dataset: str, data_dir, split: str):
    """A split as LabelledImages (files), or as a RecordSplit for "tfds:" datasets."""
    if records.is_records(dataset):
        return records.load_split(dataset, data_dir, split)
    return sources.load_source(dataset, data_dir, split)


def _subset(source, indices):
    if isinstance(source, records.RecordSplit):
        return records.subset(source, indices)
    return examples.subset(source, indices)


def _batches(source, batch_size: int, config: TrainConfig, serve=None,
             **options) -> tf.data.Dataset:
    """One epoch of (images, labels, weights) batches from files, records or memory;
    ``serve``: decode the files on tf.data service workers (`fer_tf.data.service_input`)."""
    if isinstance(source, records.RecordSplit):
        return records.make_dataset(source, batch_size, config.image_size,
                                    shuffle_buffer=config.shuffle_buffer, **options)
    return pipeline.make_dataset(source, batch_size, image_size=config.image_size,
                                 repeat=False, serve=serve, **options)


def _decode_into_memory(source, image_size: int) -> pipeline.DecodedImages:
    if isinstance(source, records.RecordSplit):
        return records.decode_all(source, image_size)
    return pipeline.DecodedImages(source, image_size)


def make_loop_data(config: TrainConfig) -> LoopData:
    """Reads the splits and builds the input pipelines of a config.

    For ``dataset="demo"`` the synthetic demo data is written to ``data_dir`` first
    if it is not there yet. "tfds:" datasets read the records `fer_tf.data.prepare`
    built (`fer_tf.data.records`): the same batches as the files give.
    """
    if config.dataset == "demo":
        demo.write_demo_dataset(config.data_dir)
    if config.data_service and records.is_records(config.dataset):
        raise ValueError(f"--data_service serves image files; --dataset={config.dataset} "
                         "reads TFDS records, which this process reads itself")
    train_source = _read_split(config.dataset, config.data_dir, config.train_split)
    val_source = _read_split(config.val_dataset or config.dataset,
                             config.val_data_dir or config.data_dir, config.val_split)
    logging.info("train (%s/%s): %s", config.dataset, config.train_split, train_source.summary())
    logging.info("validation (%s/%s): %s", config.val_dataset or config.dataset, config.val_split,
                 val_source.summary())
    if len(train_source) < config.batch_size:
        raise ValueError(f"{len(train_source)} training images is fewer than one batch of "
                         f"--batch_size={config.batch_size}")
    if config.max_val_images and len(val_source) > config.max_val_images:
        # A fixed random subset: the same images at every validation and on resume.
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(val_source))[
            : config.max_val_images])
        val_source = _subset(val_source, keep)
    weights = resolve_class_weights(config, train_source.class_counts())
    if weights is not None:
        logging.info("class weights: %s", ", ".join(
            f"{n} {w:.3g}" for n, w in zip(CLASS_NAMES, weights)))
    if config.cache_images:
        start = time.time()
        train_source = _decode_into_memory(train_source, config.image_size)
        val_source = _decode_into_memory(val_source, config.image_size)
        logging.info("decoded %d training and %d validation images into memory (%.0fs)",
                     len(train_source), len(val_source), time.time() - start)

    serve = service_input.served_input(config.data_service)  # None: decode here

    def train_epoch(epoch, skip, shard=None):
        # A different, reproducible order in each epoch.
        return _batches(train_source, config.batch_size, config, shuffle=True,
                        seed=config.seed * 100_003 + epoch, class_weights=weights,
                        drop_remainder=True, skip_batches=skip, serve=serve, shard=shard)

    def validation():
        return _batches(val_source, config.eval_batch_size, config, shuffle=False,
                        drop_remainder=False)

    return LoopData(train_epoch, validation, images_per_epoch=len(train_source))


def make_strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """The strategy of ``config.distribute``.

    "mirrored": ``tf.distribute.MirroredStrategy()``; "multi_worker":
    ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster of the ``TF_CONFIG``
    environment variable, whose reductions fail after ``collective_timeout`` seconds
    instead of waiting forever for a lost worker. Create it before any other TensorFlow
    operation (TF configures the collectives at program start); it returns once every
    worker has started. Otherwise the default strategy.
    """
    if config.distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.distribute == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=config.collective_timeout))
    return tf.distribute.get_strategy()


def _warn_if_bfloat16_is_emulated(precision: str):
    # oneDNN emulates bfloat16 on CPUs without these instructions: several times slower
    # than float32, a trap for a config measured on a CPU that has them.
    if precision != "mixed_bfloat16" or tf.config.list_physical_devices("GPU"):
        return
    if compute_precision.this_cpu_has_native_bfloat16() is False:
        logging.warning("--precision=mixed_bfloat16 on a CPU without AVX-512 BF16 or AMX: "
                        "bfloat16 is emulated here and trains several times slower than "
                        "--precision=float32")


def build_model(config: TrainConfig) -> keras.Model:
    """The expression model of a config (call inside the strategy scope and policy)."""
    options = {"shift": config.aug_shift, "scale": config.aug_scale,
               "rotation": config.aug_rotation, "erasing": config.aug_erasing}
    return model_lib.build_expression_model(
        backbone=config.backbone,
        backbone_weights=None if config.random_init else config.backbone_weights,
        num_classes=config.num_classes, augment=config.augment, seed=config.seed,
        augment_options={k: v for k, v in options.items() if v},
        decode_size=config.image_size, grayscale=config.grayscale,
        class_names=CLASS_NAMES[: config.num_classes], crop_margin=config.crop_margin,
        center_crop=config.center_crop or None, zero_init_last=config.zero_init_last)


def _prepare_distillation(model: keras.Model, config: TrainConfig) -> Optional[Callable]:
    """Applies --init_from to a new model; returns the --teacher loss (None: no teacher).
    A resumed run's checkpoint restore overwrites the --init_from weights later."""
    if config.init_from:
        distill.copy_matching_weights(model, distill.load_trained(config.init_from))
    if not config.teacher:
        return None
    teacher = distill.load_teacher(config.teacher, model)
    return distill.make_distillation_loss(model, teacher, config.distill_weight,
                                          config.distill_temperature, config.label_smoothing)


def train_and_evaluate(config: TrainConfig, workdir: str,
                       data: Optional[LoopData] = None,
                       strategy: Optional[tf.distribute.Strategy] = None) -> Dict:
    """Trains and validates a model as configured; resumes from ``workdir``'s checkpoint.

    Args:
      config: the run's settings (validated here first).
      workdir: output directory (checkpoints, events, best_model.keras, result.json);
        under --distribute=multi_worker the same folder on every worker (shared).
      data: input pipelines (default: `make_loop_data(config)`).
      strategy: from `make_strategy(config)` (default: made here; a multi-worker
        program makes it first, before any other TensorFlow operation).

    Returns:
      The result.json payload (best step, validation ABAW score, F1, accuracy,
      per-class F1).
    """
    config.validate()
    strategy = strategy or make_strategy(config)
    config.validate(strategy.num_replicas_in_sync)
    policy = compute_precision.training_policy(config.precision)
    logging.info("fer_tf training: %s, %d replica(s), precision %s%s%s", config.backbone,
                 strategy.num_replicas_in_sync, policy,
                 " (--precision=auto on this machine)" if config.precision == "auto" else "",
                 ", XLA" if config.xla else "")
    _warn_if_bfloat16_is_emulated(policy)
    keras.utils.set_random_seed(config.seed)
    data = data or make_loop_data(config)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        with strategy.scope():
            model = build_model(config)
            loss_sum_fn = _prepare_distillation(model, config)
            schedule = optim.learning_rate_schedule(config.lr_head, config.lr_schedule,
                                                    config.max_updates, config.warmup_updates)
            sgd = optim.PaperSGD(config.sgd_hparams(),
                                 loss_scale=policy == "mixed_float16",
                                 learning_rate=schedule)
        logging.info("model %s: %d trainable parameters", model.name,
                     sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        return train_loop(model, sgd, data, config, workdir, strategy, loss_sum_fn=loss_sum_fn)
    finally:
        keras.config.set_dtype_policy(previous_policy)
