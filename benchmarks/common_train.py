"""Shared code of the training benchmarks: the same work in fer_tf and in PyTorch.

One "step" is one optimiser update of the paper's recipe on ``micro_batches`` x
``micro_batch_size`` images: preprocessing (BGR minus the VGGFace2 mean), forward and
backward of each micro-batch with the class-weighted cross-entropy (PyTorch's
reduction over the whole batch), gradients accumulated, then one two-group SGD update
with momentum and coupled weight decay.

- fer_tf: `fer_tf.model.build_expression_model` + `fer_tf.train_step.make_train_step`
  (micro-batches in a tf.while_loop, `fer_tf.optim.PaperSGD`).
- PyTorch: `weights_conversion.torch_senet.SENet` (the project's reference SE-ResNet)
  + `torch.optim.SGD` with two parameter groups + ``CrossEntropyLoss(weight)``, the
  paper's accumulation loop; optional AMP (autocast + GradScaler for float16).

Run through ``benchmarks/train_step.py`` (CPU) or ``benchmarks/gpu_train.py`` (CUDA).
"""

import dataclasses
import time

import numpy as np

# VGGFace2 mean (BGR), as fer_tf.preprocessing; repeated so the PyTorch side does
# not import TensorFlow code.
_MEAN_BGR = (91.4953, 103.8827, 131.0912)
# Class weights of the paper (docs/datasets.md).
_CLASS_WEIGHTS = (1.0, 22.92, 37.5, 50.66, 3.47, 5.79, 13.55)
# (blocks, base width, input size) of the backbones in fer_tf.model.BACKBONES.
_TORCH_BACKBONES = {"senet50": ((3, 4, 6, 3), 64, 224), "small": ((1, 1, 1, 1), 32, 112),
                    "tiny": ((1, 1, 1, 1), 16, 64)}


@dataclasses.dataclass
class Setup:
    """What to benchmark."""

    backbone: str = "senet50"
    micro_batches: int = 4
    micro_batch_size: int = 4
    steps: int = 3
    warmup: int = 1
    precision: str = "float32"  # fer_tf dtype policy; torch uses AMP unless float32
    xla: bool = False
    device: str = "cpu"  # "cpu" or "cuda" (PyTorch side; TF uses what it sees)
    seed: int = 0

    @property
    def batch_size(self):
        return self.micro_batches * self.micro_batch_size

    @property
    def image_size(self):
        return _TORCH_BACKBONES[self.backbone][2]


def _batch(setup):
    rng = np.random.default_rng(setup.seed)
    s = setup.image_size
    images = rng.integers(0, 256, size=(setup.batch_size, s, s, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, size=setup.batch_size).astype(np.int32)
    weights = np.asarray(_CLASS_WEIGHTS, np.float32)[labels]
    return images, labels, weights


def _time(step, setup):
    for _ in range(setup.warmup):
        step()
    start = time.perf_counter()
    for _ in range(setup.steps):
        step()
    seconds = (time.perf_counter() - start) / setup.steps
    return {"seconds_per_step": seconds, "images_per_second": setup.batch_size / seconds}


def bench_fer_tf(setup: Setup) -> dict:
    """Times fer_tf's train step; returns seconds/step, images/s and the loss."""
    import keras
    import tensorflow as tf

    from fer_tf import model as model_lib
    from fer_tf import optim, train_step

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(setup.precision)
    try:
        keras.utils.set_random_seed(setup.seed)
        model = model_lib.build_expression_model(setup.backbone, None, augment=False)
        sgd = optim.PaperSGD(loss_scale=setup.precision == "mixed_float16")
        sgd.build(model.trainable_variables)
        step_fn = train_step.make_train_step(model, sgd, setup.micro_batches,
                                           jit_compile=setup.xla)
        images, labels, weights = (tf.constant(a) for a in _batch(setup))
        # float() waits for the step: the timing covers the whole update.
        out = {}
        result = _time(lambda: out.update(loss=float(step_fn(images, labels, weights)["loss"])),
                       setup)
    finally:
        keras.config.set_dtype_policy(previous)
    result["loss"] = out["loss"]
    return result


def bench_pytorch(setup: Setup) -> dict:
    """Times the paper's PyTorch loop on the reference SE-ResNet."""
    import torch

    from weights_conversion import torch_senet

    torch.manual_seed(setup.seed)
    blocks, width, _ = _TORCH_BACKBONES[setup.backbone]
    device = torch.device(setup.device)
    net = torch_senet.SENet(blocks, width, num_classes=7).to(device).train()
    head = list(net.fc.parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in net.parameters() if id(p) not in head_ids]
    opt = torch.optim.SGD([{"params": backbone, "lr": 1e-6}, {"params": head, "lr": 1e-3}],
                          lr=1e-3, momentum=0.9, weight_decay=5e-3)
    criterion = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(_CLASS_WEIGHTS, device=device), reduction="sum")
    images, labels, weights = _batch(setup)
    images = torch.from_numpy(images).to(device)
    labels = torch.from_numpy(labels.astype(np.int64)).to(device)
    total_weight = float(weights.sum())
    mean = torch.tensor(_MEAN_BGR, device=device).view(1, 3, 1, 1)
    amp = setup.precision != "float32"
    amp_dtype = torch.float16 if setup.precision == "mixed_float16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    out = {}

    def step():
        opt.zero_grad()
        loss_value = 0.0
        for xs, ys in zip(images.split(setup.micro_batch_size),
                          labels.split(setup.micro_batch_size)):
            # RGB uint8 NHWC -> BGR minus mean, NCHW (the work fer_tf's model does in-graph).
            x = xs.permute(0, 3, 1, 2).flip(1).float() - mean
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss = criterion(net(x).float(), ys) / total_weight
            scaler.scale(loss).backward()
            loss_value += float(loss.detach())
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out["loss"] = loss_value

    if device.type == "cpu":
        # PyTorch's OpenMP threads collapse when other processes load the cores (SENet-50
        # inference measured 20x slower with 2 threads than with 1 at load 4.7): time one
        # thread too and keep the faster.
        results = []
        for threads in sorted({1, torch.get_num_threads()}, reverse=True):
            torch.set_num_threads(threads)
            results.append({**_time(step, setup), "threads": threads})
        result = max(results, key=lambda r: r["images_per_second"])
    else:
        result = _time(step, setup)
    result["loss"] = out["loss"]
    return result


def compare(setup: Setup) -> list:
    """Runs both and returns table rows (framework, images/s, s/step, loss)."""
    rows = []
    for name, fn in (("fer_tf", bench_fer_tf), ("pytorch", bench_pytorch)):
        r = fn(setup)
        rows.append({"framework": name, **r})
    return rows


def format_table(setup: Setup, rows: list) -> str:
    """The printed table plus the final ratio line."""
    head = (f"train step: {setup.backbone} {setup.image_size}x{setup.image_size}, "
            f"{setup.micro_batches} x {setup.micro_batch_size} images accumulated, "
            f"precision {setup.precision}{', XLA' if setup.xla else ''}, device {setup.device}, "
            f"{setup.steps} timed steps after {setup.warmup} warm-up")
    lines = [head, f"{'framework':<10}{'images/s':>12}{'s/step':>10}{'loss':>10}{'threads':>9}"]
    for r in rows:
        lines.append(f"{r['framework']:<10}{r['images_per_second']:>12.2f}"
                     f"{r['seconds_per_step']:>10.3f}{r['loss']:>10.4f}{r.get('threads', ''):>9}")
    ours = next(r for r in rows if r["framework"] == "fer_tf")["images_per_second"]
    theirs = next(r for r in rows if r["framework"] == "pytorch")["images_per_second"]
    lines.append(f"ratio fer_tf / pytorch: {ours / theirs:.2f}")
    return "\n".join(lines)
