"""A training run's settings: `TrainConfig`, its checks, and what may change on resume.

Each setting is declared once, with its help text in the field's metadata;
`python -m fer_tf.train` generates its flags from these fields (`flag_fields`).
Defaults are the paper's recipe (docs/training_recipe.md).
"""

import dataclasses
import os
from typing import Dict, Optional

import numpy as np

from fer_tf import model as model_lib
from fer_tf import optim, pretrained, senet
from fer_tf.classes import CLASS_NAMES
from fer_tf.data import class_weights as class_weights_lib
from fer_tf.data import service_input

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
BACKBONES = tuple(model_lib.BACKBONES)
LR_SCHEDULES = ("constant", "cosine")


def _setting(default, help_text: str, choices=None, flag: bool = True):
    """A TrainConfig field with its flag help (and allowed values) attached."""
    return dataclasses.field(default=default, metadata={
        "help": help_text, "choices": choices, "flag": flag})


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; see each field's ``metadata["help"]``."""

    dataset: str = _setting(
        "affwild2+expw", "Dataset name for fer_tf.data.sources (affwild2, expw, fer2013, "
        "image_folder, demo, or merges like affwild2+expw); tfds:affwild2, tfds:expw, "
        "tfds:affwild2+expw read the records fer_tf.data.prepare built.")
    data_dir: str = _setting(
        "", "Dataset root (merges: comma list in the order of --dataset; tfds: datasets: "
        "the TFDS data dir). For demo, written there if absent.")
    train_split: str = _setting("train", "Training split.")
    val_split: str = _setting("validation", "Validation split.")
    val_dataset: str = _setting(
        "", "Validation dataset if it differs from --dataset (e.g. affwild2 when training "
        "on affwild2+expw).")
    val_data_dir: str = _setting("", "Root of --val_dataset ('' = --data_dir).")
    image_size: int = _setting(
        112, "Side of the decoded uint8 images (the model resizes to its own input size "
        "in-graph).")
    backbone: str = _setting(
        "senet50", "senet50 (the paper) or a smaller SE-ResNet of fer_tf.model.BACKBONES "
        "(CPU demos, 48x48 faces).", choices=BACKBONES)
    backbone_weights: str = _setting(
        "", "Converted VGGFace2 weights (.weights.h5 from `python -m weights_conversion "
        "--src senet50_ft_weight.pkl --dst senet50_ft.weights.h5`); required unless "
        "--random_init.")
    random_init: bool = _setting(
        False, "Train the backbone from random initialisation instead of --backbone_weights.")
    zero_init_last: bool = _setting(
        False, "With --random_init: start every residual branch at zero (the last "
        "BatchNorm scale of each bottleneck), so the network starts as the identity on "
        "its shortcuts (torchvision's zero_init_residual).")
    batch_size: int = _setting(256, "Images per optimiser update (all replicas).")
    micro_batches: int = _setting(
        4, "Accumulated micro-batches per update (all replicas); BatchNorm sees "
        "batch_size/micro_batches images at a time.")
    lr_head: float = _setting(1e-3, "Learning rate of the new head.")
    lr_backbone: float = _setting(1e-6, "Learning rate of the backbone.")
    momentum: float = _setting(0.9, "SGD momentum (PyTorch semantics).")
    weight_decay: float = _setting(
        5e-3, "Coupled L2 (PyTorch SGD weight_decay) added to the gradients.")
    class_weights: str = _setting(
        "auto", "auto (max_count/count_c of the training labels), none, or one "
        "comma-separated weight per class.")
    validate_every: int = _setting(3920, "Updates between validations (paper: 3920).")
    checkpoint_every: int = _setting(
        500, "Updates between checkpoints (a hard kill loses at most this many).")
    max_updates: int = _setting(39200, "Stop after this many updates.")
    patience: int = _setting(
        3, "Stop after this many validations without a better ABAW score (0: never).")
    augment: bool = _setting(
        True, "Random flip + ColorJitter in the model while training (the paper's values).")
    aug_shift: float = _setting(
        0.0, "Random shift, as a fraction of the side, after the flip (0: off, the paper).")
    aug_scale: float = _setting(0.0, "Random zoom 1 +- this (0: off).")
    aug_rotation: float = _setting(0.0, "Random rotation +- degrees (0: off).")
    aug_erasing: float = _setting(
        0.0, "RandomErasing probability after ColorJitter (0: off, the paper).")
    label_smoothing: float = _setting(
        0.0, "Label smoothing of the cross-entropy (0: off, the paper).")
    lr_schedule: str = _setting(
        "constant", "constant (the paper) or linear warm-up + cosine decay to 0 at "
        "--max_updates.", choices=LR_SCHEDULES)
    warmup_updates: int = _setting(0, "Warm-up updates of --lr_schedule=cosine.")
    teacher: str = _setting(
        "", "Distil from this trained model (a .keras file, a training workdir, or a shipped "
        "name such as fer2013): the loss adds the cross-entropy against its probabilities on "
        "the same augmented images (fer_tf.distill; '' = no teacher).")
    distill_weight: float = _setting(
        0.9, "With --teacher: the teacher term's share of the loss (the label's "
        "cross-entropy gets the rest).")
    distill_temperature: float = _setting(
        1.0, "With --teacher: softmax temperature of both networks in the teacher term.")
    init_from: str = _setting(
        "", "Start from this trained model's weights wherever layer names and shapes match "
        "(e.g. a shallower student from the teacher's first blocks of each stage); a "
        "resumed run restores its checkpoint instead ('' = --random_init or "
        "--backbone_weights alone).")
    grayscale: bool = _setting(
        False, "The model turns its input gray first (gray training data such as "
        "FER2013); stored in the model file.")
    center_crop: int = _setting(
        0, "Side of the central square of the backbone's input the network sees (0: all "
        "of it), e.g. 40 of FER2013's 48: about 0.7 times the arithmetic per image; with "
        "--aug_shift the training crops land at random positions (a random crop). "
        "Stored in the model.")
    crop_margin: float = _setting(
        0.2, "Stored in the model for prediction: share of a detected face box added per "
        "side so crops are framed like the training faces (0.2 suits Aff-Wild2/ExpW; "
        "FER2013's faces are cropped tighter).")
    seed: int = _setting(
        0, "Seed of initialisation, shuffling (seed and epoch) and augmentation.")
    precision: str = _setting(
        "float32", "Keras dtype policy; mixed_float16 adds loss scaling; auto: mixed_bfloat16 "
        "on a CPU-only machine whose CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), "
        "float32 elsewhere.", choices=PRECISIONS)
    xla: bool = _setting(False, "XLA-compile the train step (single device only).")
    distribute: str = _setting(
        "none", "mirrored: tf.distribute.MirroredStrategy over all visible GPUs (or CPU "
        "devices); multi_worker: tf.distribute.MultiWorkerMirroredStrategy over the "
        "machines of the TF_CONFIG environment variable (docs/distributed.md).",
        choices=DISTRIBUTIONS)
    collective_timeout: float = _setting(
        300.0, "--distribute=multi_worker: seconds a cross-worker reduction may wait before "
        "the run fails (a lost worker stops the others within about this time instead of "
        "hanging them); must exceed the longest pause of one worker alone, such as the "
        "chief writing best_model.keras.")
    log_every: int = _setting(50, "Updates between log lines and training summaries.")
    eval_batch_size: int = _setting(256, "Validation batch size.")
    max_val_images: int = _setting(
        0, "Validate on a fixed random subset of this many images (0: all).")
    shuffle_buffer: int = _setting(
        0, "tfds: datasets: records held by the training shuffle; 0 = all (the same order "
        "as reading the files; holds every encoded image in memory).")
    cache_images: bool = _setting(
        False, "Decode the images once into memory (small datasets such as FER2013: about "
        "180 MB at 48x48); same examples and order as reading the files every epoch.")
    data_service: str = _setting(
        "", "grpc://HOST:PORT of a tf.data service dispatcher (python -m "
        "fer_tf.data.service): its workers read and decode the training images; order and "
        "resume stay exact with one worker, a warning says when not ('' = decode here).")
    max_checkpoints: int = _setting(2, "Periodic checkpoints kept.", flag=False)
    num_classes: int = _setting(7, "Model outputs (the 7 ABAW classes).", flag=False)

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
          FileNotFoundError: --backbone_weights does not exist.
        """
        _check_ranges(self)
        _check_choices(self)
        _check_weights(self)
        _check_model_files(self)
        parse_class_weights(self.class_weights, self.num_classes)  # raises on bad syntax
        try:
            optim.learning_rate_schedule(self.lr_head, self.lr_schedule, self.max_updates,
                                         self.warmup_updates)
        except ValueError as e:
            raise ValueError(f"--lr_schedule/--warmup_updates: {e}") from e
        if num_replicas:
            check_replica_split(self.batch_size, self.micro_batches, num_replicas)
        self.sgd_hparams().validate()


def flag_fields():
    """The TrainConfig fields that are command-line flags, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["flag"]]


def _check_ranges(config: TrainConfig):
    for name in ("batch_size", "micro_batches", "validate_every", "checkpoint_every",
                 "max_updates", "log_every", "eval_batch_size", "image_size",
                 "num_classes", "max_checkpoints"):
        if getattr(config, name) <= 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(config, name)}")
    if config.shuffle_buffer < 0:
        raise ValueError(f"--shuffle_buffer must be >= 0 (0: all records), got "
                         f"{config.shuffle_buffer}")
    if config.patience < 0:
        raise ValueError(f"--patience must be >= 0 (0 disables early stopping), got "
                         f"{config.patience}")
    if config.batch_size % config.micro_batches:
        raise ValueError(
            f"--batch_size={config.batch_size} is not divisible by --micro_batches="
            f"{config.micro_batches}; choose e.g. --batch_size="
            f"{config.micro_batches * max(1, config.batch_size // config.micro_batches)} "
            f"or a --micro_batches that divides {config.batch_size}")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"--label_smoothing must be in [0, 1), got {config.label_smoothing}")
    for name in ("aug_shift", "aug_scale", "aug_rotation", "aug_erasing"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name} must be >= 0 (0 turns it off), got "
                             f"{getattr(config, name)}")
    if config.collective_timeout <= 0:
        raise ValueError(f"--collective_timeout must be > 0 seconds, got "
                         f"{config.collective_timeout}")
    if config.center_crop < 0:
        raise ValueError(f"--center_crop must be >= 0 (0: off), got {config.center_crop}")
    if config.crop_margin < 0:
        raise ValueError(f"--crop_margin must be >= 0, got {config.crop_margin}")
    if config.data_service:
        if config.cache_images:
            raise ValueError("--cache_images decodes in this process, --data_service on "
                             "service workers: drop one of them")
        service_input.parse_address(config.data_service)
    if not 0 <= config.distill_weight <= 1:
        raise ValueError(f"--distill_weight is a share of the loss in [0, 1], got "
                         f"{config.distill_weight}")
    if config.distill_temperature <= 0:
        raise ValueError(f"--distill_temperature must be > 0, got {config.distill_temperature}")
    if config.aug_erasing > 1:
        raise ValueError(f"--aug_erasing is a probability, got {config.aug_erasing}")


def _check_choices(config: TrainConfig):
    for field in dataclasses.fields(config):
        choices = field.metadata["choices"]
        if choices and getattr(config, field.name) not in choices:
            raise ValueError(f"--{field.name} must be one of {choices}, got "
                             f"{getattr(config, field.name)!r}")
    if config.xla and config.distribute != "none":
        raise ValueError("--xla works on a single device only (XLA under MirroredStrategy "
                         "has open issues); use --distribute=none or --noxla")
    if config.distribute == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise ValueError("--distribute=multi_worker reads the cluster from the TF_CONFIG "
                         "environment variable, which is not set (docs/distributed.md)")


def _check_weights(config: TrainConfig):
    if not config.random_init and not config.backbone_weights:
        raise ValueError(
            "no backbone weights: pass --backbone_weights=PATH to converted VGGFace2 "
            "weights (convert the PyTorch release with `python -m weights_conversion "
            "--src senet50_ft_weight.pkl --dst senet50_ft.weights.h5`) or --random_init "
            "to train from scratch")
    if config.random_init and config.backbone_weights:
        raise ValueError("--random_init and --backbone_weights contradict each other; "
                         "drop one of them")
    if not config.random_init and not os.path.isfile(config.backbone_weights):
        raise senet.missing_weights_error(config.backbone_weights, "--backbone_weights")
    if config.zero_init_last and not config.random_init:
        raise ValueError("--zero_init_last initialises a network trained from scratch; it "
                         "needs --random_init (it would overwrite --backbone_weights)")
    if config.zero_init_last and config.init_from:
        raise ValueError("--zero_init_last and --init_from contradict each other: "
                         "--init_from replaces the initial weights; drop one of them")


def _check_model_files(config: TrainConfig):
    for name in ("teacher", "init_from"):
        value = getattr(config, name)
        if not value:
            continue
        try:
            model_lib.resolve_model_file(pretrained.resolve(value))
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"--{name}={value}: {e}") from e


# Settings that give a checkpoint (or its data position) its meaning: resuming with a
# different value would silently reinterpret it, or fail deep inside restore.
RESUME_CRITICAL = ("dataset", "data_dir", "train_split", "image_size", "backbone", "center_crop",
                   "shuffle_buffer", "batch_size", "micro_batches", "seed", "num_classes")


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
    text = (text or "none").strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        return class_weights_lib.parse_class_weights(text, num_classes)
    except ValueError as e:
        raise ValueError(f"--class_weights: {e}; or use 'auto' or 'none'") from e


def resolve_class_weights(config: TrainConfig, class_counts) -> Optional[np.ndarray]:
    """The per-class loss weights of a config (None: unweighted)."""
    parsed = parse_class_weights(config.class_weights, config.num_classes)
    if parsed is None:
        return None
    if isinstance(parsed, str):  # "auto": the paper's max_count / count_c
        return class_weights_lib.paper_class_weights(
            np.asarray(class_counts)[: config.num_classes], CLASS_NAMES)
    return parsed
