"""Training: the paper's train step, validation schedule, checkpoints, resume, summaries.

Pieces, each usable alone (the benchmark and the tests use them directly):
- `make_train_step`: one optimiser update from one global batch (256 images): split
  into micro-batches inside the step (BatchNorm sees 64 images at a time), gradients
  summed, PyTorch's two-group coupled-L2 SGD applied once (`fer_tf.optim.PaperSGD`),
  loss = class-weighted CE with PyTorch's reduction over the *whole* batch.
- `evaluate`: ABAW score, macro F1, accuracy, per-class F1 and confusion matrix with a
  fresh `fer_tf.metrics.AbawScore` (never the training metrics).
- `train_loop`: updates, logging, TensorBoard, validation, best model, early stopping,
  checkpoints, resume, SIGTERM/Ctrl-C, NaN checks, result.json.
- `train_and_evaluate(config, workdir)`: builds data, model, optimiser, strategy from a
  `TrainConfig` and runs `train_loop` (the entry point `python -m fer_tf.train` calls it).

Only the model contract is assumed: ``model(images, training=True) -> logits`` and a
layer named ``"head"`` (learning rate ``lr_head``; everything else is the backbone).
"""

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fer_tf import atomic, losses, plots
from fer_tf import model as model_lib
from fer_tf import metrics as fer_metrics
from fer_tf import optim
from fer_tf.classes import CLASS_NAMES

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
DISTRIBUTIONS = ("none", "mirrored")
BACKBONES = tuple(model_lib.BACKBONES)
RESULT_FILE = "result.json"
BEST_MODEL_FILE = model_lib.BEST_MODEL_FILE
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the paper's recipe.

    Attributes:
      dataset: source name for `fer_tf.data.sources.load_source` ("affwild2+expw",
        "fer2013", "image_folder", "demo", ...).
      data_dir: root of the dataset (for "demo": created there if absent).
      train_split / val_split: split names passed to `load_source`.
      val_dataset / val_data_dir: validation source when it differs from the training
        one ("" = same), e.g. Aff-Wild2 alone when training on Aff-Wild2 + ExpW.
      image_size: side of the uint8 images the input pipeline produces (the model
        resizes to its own input size in-graph).
      backbone: "senet50" (the paper), "small" or "tiny" (small SE-ResNets for CPU
        demos and tests; see fer_tf.model.BACKBONES).
      backbone_weights: converted VGGFace2 weights (``.weights.h5``); required unless
        ``random_init``.
      random_init: train the backbone from random initialisation.
      batch_size: images per optimiser update (global, all replicas).
      micro_batches: micro-batches per update (global); BatchNorm sees
        batch_size / micro_batches images at a time.
      lr_head, lr_backbone, momentum, weight_decay: `fer_tf.optim.SGDHyperParams`.
      class_weights: "auto" (max_count / count_c from the training labels), "none",
        or a comma list of one weight per class.
      validate_every: optimiser updates between validations (paper: 3920).
      checkpoint_every: updates between checkpoints (a hard kill loses at most this).
      max_updates: stop after this many updates.
      patience: stop after this many validations without a better ABAW score (0: never).
      augment: random flip + ColorJitter in the model (training=True).
      aug_shift, aug_scale, aug_rotation: random affine jitter after the flip (largest
        shift as a fraction of the side, zoom +-, degrees); 0 = off (the paper).
      aug_erasing: RandomErasing probability after ColorJitter; 0 = off (the paper).
      label_smoothing: share of the target spread over all classes; 0 = off (the paper).
      lr_schedule: "constant" (the paper) or "cosine" (linear warm-up over
        ``warmup_updates``, then cosine to 0 at ``max_updates``).
      warmup_updates: warm-up length of the cosine schedule.
      crop_margin: stored in the model for prediction: the share of a detected face box
        added per side so crops are framed like this dataset's faces (0.2 suits the
        Aff-Wild2/ExpW crops; FER2013's faces are cropped tighter).
      grayscale: the model turns its input gray first (for gray training sets such as
        FER2013, so colour photos look like the training faces); stored in the model.
      seed: seeds initialisation, shuffling (seed + epoch) and augmentation.
      precision: "float32", "mixed_bfloat16" or "mixed_float16" (with loss scaling).
      xla: compile the train step with XLA (single device only).
      distribute: "none" or "mirrored" (all visible GPUs, or CPU devices).
      log_every: updates between log lines / training summaries.
      eval_batch_size: images per validation batch.
      max_val_images: validate on at most this many images (0: all).
      cache_images: decode the training and validation images once into memory
        (small datasets such as FER2013: about 180 MB at 48x48); same examples and
        order as reading the files every epoch.
      max_checkpoints: periodic checkpoints kept.
      num_classes: model outputs (7 ABAW classes).
    """

    dataset: str = "affwild2+expw"
    data_dir: str = ""
    train_split: str = "train"
    val_split: str = "validation"
    val_dataset: str = ""
    val_data_dir: str = ""
    image_size: int = 112
    backbone: str = "senet50"
    backbone_weights: str = ""
    random_init: bool = False
    batch_size: int = 256
    micro_batches: int = 4
    lr_head: float = 1e-3
    lr_backbone: float = 1e-6
    momentum: float = 0.9
    weight_decay: float = 5e-3
    class_weights: str = "auto"
    validate_every: int = 3920
    checkpoint_every: int = 500
    max_updates: int = 39200
    patience: int = 3
    augment: bool = True
    aug_shift: float = 0.0
    aug_scale: float = 0.0
    aug_rotation: float = 0.0
    aug_erasing: float = 0.0
    label_smoothing: float = 0.0
    lr_schedule: str = "constant"
    warmup_updates: int = 0
    grayscale: bool = False
    crop_margin: float = 0.2
    seed: int = 0
    precision: str = "float32"
    xla: bool = False
    distribute: str = "none"
    log_every: int = 50
    eval_batch_size: int = 256
    max_val_images: int = 0
    cache_images: bool = False
    max_checkpoints: int = 2
    num_classes: int = 7

    def sgd_hparams(self) -> optim.SGDHyperParams:
        """The optimiser settings of this config."""
        return optim.SGDHyperParams(self.lr_head, self.lr_backbone, self.momentum,
                                    self.weight_decay)

    def validate(self, num_replicas: Optional[int] = None):
        """Checks the config before anything is built; errors say what to change.

        Args:
          num_replicas: replicas of the strategy, when known (for divisibility checks).

        Raises:
          ValueError: a bad combination, naming the flag(s) to change.
        """
        def positive(name):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")

        for name in ("batch_size", "micro_batches", "validate_every", "checkpoint_every",
                     "max_updates", "log_every", "eval_batch_size", "image_size",
                     "num_classes", "max_checkpoints"):
            positive(name)
        if self.patience < 0:
            raise ValueError(f"--patience must be >= 0 (0 disables early stopping), got {self.patience}")
        if self.batch_size % self.micro_batches:
            raise ValueError(
                f"--batch_size={self.batch_size} is not divisible by --micro_batches="
                f"{self.micro_batches}; choose e.g. --batch_size="
                f"{self.micro_batches * max(1, self.batch_size // self.micro_batches)} "
                f"or a --micro_batches that divides {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.distribute not in DISTRIBUTIONS:
            raise ValueError(f"--distribute must be one of {DISTRIBUTIONS}, got {self.distribute!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"--backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.xla and self.distribute != "none":
            raise ValueError("--xla works on a single device only (XLA under MirroredStrategy "
                             "has open issues); use --distribute=none or --noxla")
        if not self.random_init and not self.backbone_weights:
            raise ValueError(
                "no backbone weights: pass --backbone_weights=PATH to converted VGGFace2 "
                "weights (convert the PyTorch release with `python -m weights_conversion "
                "--src senet50_ft_weight.pkl --dst senet50_ft.weights.h5`) or --random_init "
                "to train from scratch")
        if self.random_init and self.backbone_weights:
            raise ValueError("--random_init and --backbone_weights contradict each other; "
                             "drop one of them")
        if not self.random_init and not os.path.isfile(self.backbone_weights):
            raise FileNotFoundError(
                f"--backbone_weights={self.backbone_weights!r} does not exist. Convert the "
                "VGGFace2 PyTorch release with `python -m weights_conversion --src "
                f"senet50_ft_weight.pkl --dst {self.backbone_weights}`, or pass --random_init")
        parse_class_weights(self.class_weights, self.num_classes)  # raises on bad syntax
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("aug_shift", "aug_scale", "aug_rotation", "aug_erasing"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        if self.crop_margin < 0:
            raise ValueError(f"--crop_margin must be >= 0, got {self.crop_margin}")
        if self.aug_erasing > 1:
            raise ValueError(f"--aug_erasing is a probability, got {self.aug_erasing}")
        try:
            optim.learning_rate_schedule(self.lr_head, self.lr_schedule, self.max_updates,
                                         self.warmup_updates)
        except ValueError as e:
            raise ValueError(f"--lr_schedule/--warmup_updates: {e}") from e
        if num_replicas:
            check_replica_split(self.batch_size, self.micro_batches, num_replicas)
        self.sgd_hparams().validate()


# Settings that give a checkpoint (or its data position) its meaning: resuming with a
# different value would silently reinterpret it, or fail deep inside restore.
RESUME_CRITICAL = ("dataset", "data_dir", "train_split", "image_size", "backbone",
                   "batch_size", "micro_batches", "seed", "num_classes")


def resume_conflicts(previous: Dict[str, str], config: TrainConfig) -> list:
    """The critical settings where ``config`` differs from a workdir's recorded flags.

    Args:
      previous: flag name -> value as written in the workdir's flags.txt.
      config: the new run's settings.

    Returns:
      one "--name=new (the checkpoint's run used old)" string per conflict.
    """
    conflicts = []
    for name in RESUME_CRITICAL:
        if name not in previous:
            continue
        new = getattr(config, name)
        old = previous[name]
        if str(new) != old and not (isinstance(new, int) and old.lstrip("-").isdigit()
                                    and int(old) == new):
            conflicts.append(f"--{name}={new} (the checkpoint's run used {old})")
    return conflicts


def check_replica_split(batch_size: int, micro_batches: int, num_replicas: int):
    """Raises ValueError unless every replica gets whole micro-batches of equal size."""
    if micro_batches % num_replicas:
        raise ValueError(
            f"--micro_batches={micro_batches} is not divisible by the {num_replicas} replicas: "
            f"each replica runs micro_batches/replicas micro-batches so BatchNorm keeps seeing "
            f"{batch_size // micro_batches} images; use --micro_batches="
            f"{num_replicas * max(1, micro_batches // num_replicas)} (and a --batch_size "
            "divisible by it)")


def parse_class_weights(text: str, num_classes: int):
    """"auto" -> "auto", "none"/"" -> None, "a,b,..." -> one positive weight per class.

    Raises:
      ValueError: a malformed list (see `fer_tf.data.class_weights.parse_class_weights`).
    """
    from fer_tf.data import class_weights as class_weights_lib

    text = (text or "none").strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        return class_weights_lib.parse_class_weights(text, num_classes)
    except ValueError as e:
        raise ValueError(f"--class_weights: {e}; or use 'auto' or 'none'") from e


# ---------------------------------------------------------------------------------------
# The train step.


def _split_micro_batches(x, n):
    """[B, ...] -> [n, B/n, ...], keeping static shapes when B is static."""
    b = x.shape[0]
    if b is not None and b % n:
        raise ValueError(f"per-replica batch of {b} is not divisible into {n} micro-batches")
    inner = [d if d is not None else tf.shape(x)[i + 1] for i, d in enumerate(x.shape[1:])]
    return tf.reshape(x, [n, -1 if b is None else b // n] + inner)


def make_train_step(model: keras.Model, sgd: optim.PaperSGD, micro_batches: int,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    jit_compile: bool = False, head_name: str = "head",
                    label_smoothing: float = 0.0) -> Callable:
    """Builds the compiled function doing one optimiser update from one global batch.

    Each replica receives batch/R images, runs ``micro_batches/R`` micro-batches in a
    ``tf.while_loop`` (``parallel_iterations=1``: one micro-batch's activations live at a
    time), sums the gradients of ``sum(w*ce) / W`` where ``W`` is the weight sum of the
    whole global batch (so the total is PyTorch's ``CrossEntropyLoss(weight)`` of the
    256 images), then applies `PaperSGD` once (coupled L2 counted once over replicas).
    BatchNorm moving statistics are updated by every micro-batch's forward pass; under
    several replicas each replica updates its own copy from its own micro-batches (as
    per-GPU BatchNorm in PyTorch DDP), and checkpoints/saved models hold replica 0's.

    Args:
      model: built Keras model; ``model(x, training=True)`` returns logits.
      sgd: the optimiser (created and built in ``strategy.scope()``).
      micro_batches: micro-batches per update over all replicas.
      strategy: a tf.distribute strategy (default: none / the current one).
      jit_compile: XLA-compile the step (single replica only).
      head_name: name of the layer trained at ``lr_head``.
      label_smoothing: see `fer_tf.losses.per_example_cross_entropy` (0: the paper).

    Returns:
      ``step(images, labels, weights) -> {"loss": float32, "grad_norm": float32}``;
      the inputs are global-batch tensors, or per-replica values from
      ``strategy.experimental_distribute_dataset``. ``loss`` is the batch's weighted CE,
      ``grad_norm`` the global norm of its gradient (before L2 and the lr ratio).
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if micro_batches % replicas:
        check_replica_split(micro_batches, micro_batches, replicas)
    if jit_compile and replicas > 1:
        raise ValueError("jit_compile needs a single replica (XLA under MirroredStrategy "
                         "has open issues); set xla off or use one device")
    local_micro = micro_batches // replicas
    variables = list(model.trainable_variables)
    is_head = optim.head_mask(model, variables, head_name)
    # float32 (also under mixed precision, whose variables are float32); float64 models
    # (the exactness tests) keep float64 throughout.
    loss_dtype = tf.float64 if all(v.dtype == "float64" for v in variables) else tf.float32

    def replica_step(images, labels, weights):
        weights = tf.cast(weights, loss_dtype)
        total_weight = tf.reduce_sum(weights)
        ctx = tf.distribute.get_replica_context()
        if replicas > 1:
            # The denominator is the weight sum of the *global* batch.
            total_weight = ctx.all_reduce(tf.distribute.ReduceOp.SUM, total_weight)
        mb_images = _split_micro_batches(images, local_micro)
        mb_labels = _split_micro_batches(labels, local_micro)
        mb_weights = _split_micro_batches(weights, local_micro)

        def body(i, loss_sum, grad_sums):
            with tf.GradientTape() as tape:
                logits = model(mb_images[i], training=True)
                loss = tf.cast(losses.weighted_cross_entropy_sum(
                    mb_labels[i], logits, mb_weights[i], label_smoothing),
                    loss_dtype) / total_weight
                scaled = sgd.scale_loss(loss)
            grads = tape.gradient(scaled, variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grad_sums = [a + tf.cast(g, a.dtype) for a, g in zip(grad_sums, grads)]
            return i + 1, loss_sum + loss, grad_sums

        zeros = [tf.zeros(v.shape, v.dtype) for v in variables]
        _, loss_sum, grads = tf.while_loop(
            lambda i, *_: i < local_micro, body,
            (tf.constant(0), tf.constant(0.0, loss_dtype), zeros),
            parallel_iterations=1)
        scale = sgd.current_loss_scale()
        reduced = grads
        if replicas > 1:
            loss_sum = ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss_sum)
            # Only for the logged norm; the optimiser sums the replicas' gradients itself.
            reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grad_norm = tf.cast(tf.linalg.global_norm(reduced), tf.float32) / scale
        sgd.apply(grads, variables, is_head, num_replicas=replicas)
        return loss_sum, grad_norm

    if replicas == 1 and not isinstance(strategy, tf.distribute.MirroredStrategy):
        @tf.function(jit_compile=jit_compile)
        def step(images, labels, weights):
            loss, grad_norm = replica_step(images, labels, weights)
            return {"loss": loss, "grad_norm": grad_norm}
    else:
        @tf.function
        def step(images, labels, weights):
            loss, grad_norm = strategy.run(replica_step, args=(images, labels, weights))
            first = strategy.experimental_local_results
            return {"loss": first(loss)[0], "grad_norm": first(grad_norm)[0]}
    return step


# ---------------------------------------------------------------------------------------
# Validation.


def make_predict_fn(model: keras.Model) -> Callable:
    """Compiled ``images -> predicted class ids (int32)`` in inference mode."""
    @tf.function
    def predict(images):
        return tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
    return predict


def evaluate(predict_fn: Callable, dataset, num_classes: int) -> Dict:
    """Scores a model on a dataset with a fresh `AbawScore` (not the training metrics).

    Args:
      predict_fn: from `make_predict_fn`.
      dataset: yields (images, labels, ...) batches.
      num_classes: classes the macro F1 averages over.

    Returns:
      dict(abaw_score, f1, accuracy, per_class_f1 (list), confusion_matrix (ndarray),
      num_images).
    """
    metric = fer_metrics.AbawScore(num_classes=num_classes, name="val_abaw_score")
    count = 0
    for batch in dataset:
        images, labels = batch[0], batch[1]
        metric.update_state(labels, predict_fn(images))
        count += int(labels.shape[0])
    cm = metric.confusion_matrix().numpy()
    scores = fer_metrics.scores_from_confusion(cm)
    scores["confusion_matrix"] = cm
    scores["num_images"] = count
    return scores


def per_class_table(scores: Dict, class_names: Sequence[str]) -> str:
    """A small text table of per-class F1 (and support) for the log."""
    cm = scores["confusion_matrix"]
    lines = [f"{'class':<12}{'F1':>8}{'support':>10}"]
    for name, f1, support in zip(class_names, scores["per_class_f1"], cm.sum(axis=1)):
        lines.append(f"{name:<12}{f1:>8.4f}{int(support):>10d}")
    lines.append(f"{'macro F1':<12}{scores['f1']:>8.4f}  accuracy {scores['accuracy']:.4f}"
                 f"  ABAW {scores['abaw_score']:.4f}")
    return "\n".join(lines)


def confusion_matrix_image(cm: np.ndarray, class_names: Sequence[str], title: str = "") -> np.ndarray:
    """The evaluation report's confusion-matrix figure as a uint8 RGB image [1, H, W, 3]."""
    png = plots.confusion_png(cm, class_names, title)
    return tf.image.decode_png(png, channels=3).numpy()[None]


# ---------------------------------------------------------------------------------------
# TensorBoard summaries written with TensorFlow's own ops: the same records as
# tf.summary.scalar/image, without requiring the tensorboard package to *write* them
# (TF 2.21 no longer depends on it; `pip install tensorboard` to view the logs).


def _metadata(plugin):
    from tensorflow.core.framework import summary_pb2
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))


def summary_scalar(tag: str, value, step: int):
    """Writes a TensorBoard scalar to the default writer."""
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=_metadata("scalars"))


def summary_image(tag: str, image: np.ndarray, step: int):
    """Writes one uint8 RGB image [H, W, 3] as a TensorBoard image summary."""
    png = tf.io.encode_png(image)
    tensor = tf.stack([tf.as_string(image.shape[1]), tf.as_string(image.shape[0]), png])
    tf.summary.write(tag, tensor, step=step, metadata=_metadata("images"))


# ---------------------------------------------------------------------------------------
# Files.


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
        every time it is called with the same epoch (the resume relies on it).
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


def train_loop(model: keras.Model, sgd: optim.PaperSGD, data: LoopData, config: TrainConfig,
               workdir: str, strategy: Optional[tf.distribute.Strategy] = None,
               class_names: Sequence[str] = CLASS_NAMES) -> Dict:
    """Trains until ``max_updates`` or early stopping; resumes from ``workdir`` if possible.

    Uses from ``config``: batch_size, micro_batches, validate_every, checkpoint_every,
    max_updates, patience, log_every, xla, max_checkpoints, num_classes.

    Writes into ``workdir``: ``checkpoints/`` (model, optimiser, step, epoch and batch
    position, best score; atomic), TensorBoard events, ``best_model.keras`` and
    ``result.json`` (rewritten at each improvement and at the end).

    Returns:
      The result.json payload.

    Raises:
      FloatingPointError: a non-finite loss, naming the update and last good checkpoint.
      TrainingInterrupted: after SIGTERM/SIGINT, once a checkpoint is written.
    """
    strategy = strategy or tf.distribute.get_strategy()
    os.makedirs(workdir, exist_ok=True)
    _remove_interrupted_writes(workdir)
    class_names = tuple(class_names)[: config.num_classes]
    with strategy.scope():
        sgd.build(model.trainable_variables)
    train_step = make_train_step(model, sgd, config.micro_batches, strategy,
                                 jit_compile=config.xla, label_smoothing=config.label_smoothing)
    predict_fn = make_predict_fn(model)
    state = _state_variables()
    # The model's random state (augmentation seed generators): tf.train.Checkpoint does
    # not reach it through the Keras model, so without this a resumed run would draw
    # different augmentations than the uninterrupted one.
    checkpoint = tf.train.Checkpoint(model=model, optimizer=sgd.optimizer,
                                     random_state=random_state_variables(model), **state)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(workdir, CHECKPOINT_DIR),
                                         max_to_keep=config.max_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("Resumed from %s at update %d (epoch %d, batch %d)",
                     manager.latest_checkpoint, int(state["step"].numpy()),
                     int(state["epoch"].numpy()), int(state["batch_in_epoch"].numpy()))
    else:
        logging.info("No checkpoint in %s: starting from update 0", manager.directory)
    writer = tf.summary.create_file_writer(workdir)
    result_path = os.path.join(workdir, RESULT_FILE)
    best_scores = None
    if os.path.isfile(result_path):
        with open(result_path) as f:
            previous = json.load(f)
        if "val_abaw_score" in previous:
            best_scores = {
                "abaw_score": previous["val_abaw_score"], "f1": previous["val_f1"],
                "accuracy": previous["val_accuracy"],
                "per_class_f1": list(previous["val_per_class_f1"].values()),
                "num_images": previous.get("val_num_images", 0)}

    def save(reason):
        path = manager.save(checkpoint_number=int(state["step"].numpy()))
        logging.info("Checkpoint %s (%s)", path, reason)
        return path

    def validate():
        nonlocal best_scores
        step = int(state["step"].numpy())
        start = time.time()
        scores = evaluate(predict_fn, data.validation(), config.num_classes)
        logging.info("Validation at update %d (%d images, %.1fs): ABAW %.4f, F1 %.4f, "
                     "accuracy %.4f\n%s", step, scores["num_images"], time.time() - start,
                     scores["abaw_score"], scores["f1"], scores["accuracy"],
                     per_class_table(scores, class_names))
        with writer.as_default():
            summary_scalar("val/abaw_score", scores["abaw_score"], step)
            summary_scalar("val/f1", scores["f1"], step)
            summary_scalar("val/accuracy", scores["accuracy"], step)
            for name, f1 in zip(class_names, scores["per_class_f1"]):
                summary_scalar(f"val/f1_{name}", f1, step)
            summary_image("val/confusion_matrix",
                          confusion_matrix_image(scores["confusion_matrix"], class_names,
                                                 f"validation, update {step}")[0],
                          step)
        writer.flush()
        state["last_validated"].assign(step)
        if scores["abaw_score"] > state["best_score"].numpy():
            state["best_score"].assign(scores["abaw_score"])
            state["best_step"].assign(step)
            state["bad_validations"].assign(0)
            best_scores = scores
            save_model_atomic(model, os.path.join(workdir, BEST_MODEL_FILE))
            write_json_atomic(result_path, _result_payload(state, best_scores, class_names,
                                                           False, "running"))
            logging.info("New best ABAW %.4f at update %d: saved %s", scores["abaw_score"],
                         step, BEST_MODEL_FILE)
        else:
            state["bad_validations"].assign_add(1)
            logging.info("No improvement for %d validation(s) (best %.4f at update %d)",
                         int(state["bad_validations"].numpy()),
                         float(state["best_score"].numpy()), int(state["best_step"].numpy()))
            if config.patience and state["bad_validations"].numpy() >= config.patience:
                state["stopped_early"].assign(True)

    def done():
        return (int(state["step"].numpy()) >= config.max_updates
                or bool(state["stopped_early"].numpy()))

    interval = {"loss": 0.0, "grad_norm": 0.0, "n": 0, "start": time.time(), "images": 0}
    with _StopRequest() as stop:
        while not done():
            epoch = int(state["epoch"].numpy())
            skip = int(state["batch_in_epoch"].numpy())
            dataset = data.train_epoch(epoch, skip)
            if strategy.num_replicas_in_sync > 1:
                dataset = strategy.experimental_distribute_dataset(dataset)
            batches_this_epoch = skip
            for images, labels, weights in dataset:
                out = train_step(images, labels, weights)
                loss = float(out["loss"])
                state["step"].assign_add(1)
                state["batch_in_epoch"].assign_add(1)
                batches_this_epoch += 1
                step = int(state["step"].numpy())
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"loss is {loss} at update {step} (epoch {epoch}, batch "
                        f"{batches_this_epoch - 1}); last good checkpoint: "
                        f"{manager.latest_checkpoint or 'none (no checkpoint yet)'}. Lower "
                        "--lr_head/--lr_backbone, check the data and class weights, or use "
                        "--precision=float32; rerunning resumes from that checkpoint")
                interval["loss"] += loss
                interval["grad_norm"] += float(out["grad_norm"])
                interval["n"] += 1
                interval["images"] += config.batch_size
                if step % config.log_every == 0 or step == config.max_updates:
                    _log_interval(writer, interval, step, config, *sgd.learning_rates(),
                                  epoch, data.images_per_epoch, batches_this_epoch)
                    interval.update(loss=0.0, grad_norm=0.0, n=0, images=0,
                                    start=time.time())
                paused = time.time()
                validated = False
                if step % config.validate_every == 0:
                    validate()
                    validated = True
                if step % config.checkpoint_every == 0 or validated:
                    save("periodic")
                # images/s measures training only, not validation or checkpointing.
                interval["start"] += time.time() - paused
                if stop.signal_name:
                    path = save(stop.signal_name)
                    raise TrainingInterrupted(stop.signal_name, step, path)
                if done():
                    break
            else:
                if batches_this_epoch == 0:
                    raise ValueError(
                        f"the training data gave no batch of {config.batch_size} images in "
                        f"epoch {epoch}: use a smaller --batch_size or more data")
                state["epoch"].assign_add(1)
                state["batch_in_epoch"].assign(0)
        step = int(state["step"].numpy())
        if int(state["last_validated"].numpy()) != step:
            validate()
        if manager.latest_checkpoint != os.path.join(manager.directory, f"ckpt-{step}"):
            save("final")
    reason = "early_stopping" if bool(state["stopped_early"].numpy()) else "max_updates"
    payload = _result_payload(state, best_scores, class_names, True, reason)
    write_json_atomic(result_path, payload)
    writer.close()
    logging.info("Finished (%s) after %d updates: best ABAW %.4f at update %d", reason, step,
                 payload.get("val_abaw_score", float("nan")), payload["best_step"])
    return payload


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
        summary_scalar("train/loss", loss, step)
        summary_scalar("train/learning_rate_head", lr_head, step)
        summary_scalar("train/learning_rate_backbone", lr_backbone, step)
        summary_scalar("train/images_per_second", images_per_second, step)
        summary_scalar("train/grad_norm", grad_norm, step)


def _format_eta(seconds):
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# ---------------------------------------------------------------------------------------
# From a config: data, model, strategy.


def resolve_class_weights(config: TrainConfig, class_counts) -> Optional[np.ndarray]:
    """The per-class loss weights of a config (None: unweighted)."""
    from fer_tf.data import class_weights as class_weights_lib

    parsed = parse_class_weights(config.class_weights, config.num_classes)
    if parsed is None:
        return None
    if isinstance(parsed, str):  # "auto": the paper's max_count / count_c
        return class_weights_lib.paper_class_weights(
            np.asarray(class_counts)[: config.num_classes], CLASS_NAMES)
    return parsed


def make_loop_data(config: TrainConfig) -> LoopData:
    """Reads the splits and builds the input pipelines of a config.

    For ``dataset="demo"`` the synthetic demo data is written to ``data_dir`` first
    if it is not there yet.
    """
    from fer_tf.data import examples, pipeline, sources

    if config.dataset == "demo":
        from fer_tf.data import demo
        demo.write_demo_dataset(config.data_dir)
    train_source = sources.load_source(config.dataset, config.data_dir, config.train_split)
    val_source = sources.load_source(config.val_dataset or config.dataset,
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
        val_source = examples.subset(val_source, keep)
    weights = resolve_class_weights(config, train_source.class_counts())
    if weights is not None:
        logging.info("class weights: %s", ", ".join(
            f"{n} {w:.3g}" for n, w in zip(CLASS_NAMES, weights)))
    if config.cache_images:
        start = time.time()
        train_source = pipeline.DecodedImages(train_source, config.image_size)
        val_source = pipeline.DecodedImages(val_source, config.image_size)
        logging.info("decoded %d training and %d validation images into memory (%.0fs)",
                     len(train_source), len(val_source), time.time() - start)

    def train_epoch(epoch, skip):
        # A different, reproducible order in each epoch.
        return pipeline.make_dataset(
            train_source, config.batch_size, image_size=config.image_size, shuffle=True,
            seed=config.seed * 100_003 + epoch, repeat=False, class_weights=weights,
            drop_remainder=True, skip_batches=skip)

    def validation():
        return pipeline.make_dataset(
            val_source, config.eval_batch_size, image_size=config.image_size, shuffle=False,
            repeat=False, drop_remainder=False)

    return LoopData(train_epoch, validation, images_per_epoch=len(train_source))


def make_strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """``tf.distribute.MirroredStrategy()`` for "mirrored", else the default strategy."""
    if config.distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


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
        class_names=CLASS_NAMES[: config.num_classes], crop_margin=config.crop_margin)


def train_and_evaluate(config: TrainConfig, workdir: str,
                       data: Optional[LoopData] = None) -> Dict:
    """Trains and validates a model as configured; resumes from ``workdir``'s checkpoint.

    Args:
      config: the run's settings (validated here first).
      workdir: output directory (checkpoints, events, best_model.keras, result.json).
      data: input pipelines (default: `make_loop_data(config)`).

    Returns:
      The result.json payload (best step, validation ABAW score, F1, accuracy,
      per-class F1).
    """
    config.validate()
    strategy = make_strategy(config)
    config.validate(strategy.num_replicas_in_sync)
    logging.info("fer_tf training: %s, %d replica(s), precision %s%s", config.backbone,
                 strategy.num_replicas_in_sync, config.precision, ", XLA" if config.xla else "")
    keras.utils.set_random_seed(config.seed)
    data = data or make_loop_data(config)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        with strategy.scope():
            model = build_model(config)
            schedule = optim.learning_rate_schedule(config.lr_head, config.lr_schedule,
                                                    config.max_updates, config.warmup_updates)
            sgd = optim.PaperSGD(config.sgd_hparams(),
                                 loss_scale=config.precision == "mixed_float16",
                                 learning_rate=schedule)
        logging.info("model %s: %d trainable parameters", model.name,
                     sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        return train_loop(model, sgd, data, config, workdir, strategy)
    finally:
        keras.config.set_dtype_policy(previous_policy)
