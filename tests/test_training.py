"""The train step and loop: PyTorch equivalence, accumulation, multi-device, resume, NaN, SIGTERM."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from fer_tf.batch_norm import TorchBatchNorm
from fer_tf.data.class_weights import paper_class_weights
from fer_tf import model as model_lib, optim, train_config, train_step, training

CLASSES = 7
SIZE = 8
CLASS_COUNTS = [50, 9, 4, 6, 30, 15, 12]


def _convnet(dtype="float32", bn_trainable=True, seed=1):
    """Conv -> BatchNorm (fer_tf's, as in the SE-ResNet) -> ReLU -> pool -> Dense "head"."""
    keras.utils.set_random_seed(seed)
    # dtype None: layers follow the global dtype policy (mixed precision tests).
    inputs = keras.Input((SIZE, SIZE, 3), dtype=dtype or "float32")
    x = keras.layers.Conv2D(6, 3, use_bias=False, name="conv", dtype=dtype)(inputs)
    bn = TorchBatchNorm(momentum=0.9, epsilon=1e-5, name="bn", dtype=dtype)
    x = keras.layers.ReLU(dtype=dtype)(bn(x))
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    logits = keras.layers.Dense(CLASSES, name="head", dtype=dtype)(x)
    model = keras.Model(inputs, logits)
    rng = np.random.default_rng(seed)
    # Non-trivial BatchNorm parameters and statistics.
    bn.set_weights([rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.2, 6), rng.normal(0, 0.2, 6),
                    rng.uniform(0.5, 2.0, 6)])
    bn.trainable = bn_trainable
    return model


def _torch_twin(model, dtype):
    conv = torch.nn.Conv2d(3, 6, 3, bias=False)
    bn = torch.nn.BatchNorm2d(6, eps=1e-5, momentum=0.1)
    head = torch.nn.Linear(6, CLASSES)
    net = torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), head).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(model.get_layer("conv").get_weights()[0].transpose(3, 2, 0, 1)))
        gamma, beta, mean, var = model.get_layer("bn").get_weights()
        for p, v in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), (gamma, beta, mean, var)):
            p.copy_(torch.tensor(v))
        kernel, bias = model.get_layer("head").get_weights()
        head.weight.copy_(torch.tensor(kernel.T))
        head.bias.copy_(torch.tensor(bias))
    return net


def _keras_state(model):
    gamma, beta, mean, variance = model.get_layer("bn").get_weights()
    return {"conv": model.get_layer("conv").get_weights()[0], "gamma": gamma, "beta": beta,
            "moving_mean": mean, "moving_variance": variance,
            "head_kernel": model.get_layer("head").get_weights()[0],
            "head_bias": model.get_layer("head").get_weights()[1]}


def _torch_state(net):
    conv, bn, head = net[0], net[1], net[5]
    t = lambda p: p.detach().numpy()
    return {"conv": t(conv.weight).transpose(2, 3, 1, 0), "gamma": t(bn.weight), "beta": t(bn.bias),
            "moving_mean": t(bn.running_mean), "moving_variance": t(bn.running_var),
            "head_kernel": t(head.weight).T,
            "head_bias": t(head.bias)}


def _batches(n, batch, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    class_w = paper_class_weights(CLASS_COUNTS)
    for _ in range(n):
        x = rng.uniform(0, 1, size=(batch, SIZE, SIZE, 3)).astype(dtype)
        y = rng.integers(0, CLASSES, size=batch).astype(np.int32)
        yield x, y, class_w[y]


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _train_torch(net, hp, batches, micro_batches, bn_trainable=True):
    """The paper's PyTorch loop: accumulate micro-batch gradients, one SGD step."""
    head = list(net[5].parameters())
    backbone = [net[0].weight] + ([net[1].weight, net[1].bias] if bn_trainable else [])
    if not bn_trainable:
        net[1].eval()
        for p in net[1].parameters():
            p.requires_grad_(False)
    opt = torch.optim.SGD([{"params": backbone, "lr": hp.lr_backbone},
                           {"params": head, "lr": hp.lr_head}],
                          lr=hp.lr_head, momentum=hp.momentum, weight_decay=hp.weight_decay)
    dtype = net[0].weight.dtype
    class_w = torch.tensor(paper_class_weights(CLASS_COUNTS), dtype=dtype)
    # reduction="sum" is sum_i w[y_i] * ce_i; dividing by the whole batch's weight sum
    # makes the accumulated gradient that of CrossEntropyLoss(weight) over the batch.
    criterion = torch.nn.CrossEntropyLoss(weight=class_w, reduction="sum")
    for x, y, w in batches:
        opt.zero_grad()
        total = float(np.sum(w.astype(np.float64)))
        for xs, ys in zip(np.split(x, micro_batches), np.split(y, micro_batches)):
            out = net(torch.tensor(xs).permute(0, 3, 1, 2))
            (criterion(out, torch.tensor(ys, dtype=torch.int64)) / total).backward()
        opt.step()


def _train_keras(model, hp, batches, micro_batches):
    sgd = optim.PaperSGD(hp)
    sgd.build(model.trainable_variables)
    step = train_step.make_train_step(model, sgd, micro_batches)
    losses_seen = [float(step(x, y, w)["loss"]) for x, y, w in batches]
    return losses_seen


EXACT = optim.SGDHyperParams(lr_head=0.5, lr_backbone=0.5 / 1024, momentum=0.875, weight_decay=0.05)


def test_full_recipe_with_accumulation_equals_pytorch_float64():
    """6 updates of 4 accumulated micro-batches, BatchNorm in training mode, two groups,
    coupled L2, class weights: every trainable weight's change and BN's moving mean and
    variance (unbiased, as PyTorch's running_var) equal PyTorch's (float64 both sides:
    1e-10 relative; binary-fraction lrs/momentum because Keras keeps them in float32)."""
    model = _convnet("float64")
    net = _torch_twin(model, torch.float64)
    before = _keras_state(model)
    _train_keras(model, EXACT, _batches(6, 16, "float64"), micro_batches=4)
    _train_torch(net, EXACT, _batches(6, 16, "float64"), micro_batches=4)
    ours, theirs = _keras_state(model), _torch_state(net)
    for name in ours:
        assert _rel(ours[name] - before[name], theirs[name] - before[name]) <= 1e-10, name


def test_paper_settings_float32_equal_pytorch_within_1e6():
    """The paper's lrs (1e-3 / 1e-6), momentum 0.9, wd 0.005, float32 both sides:
    weights within 1e-6 relative after 6 updates of 4 micro-batches."""
    hp = optim.SGDHyperParams()
    model = _convnet("float32")
    net = _torch_twin(model, torch.float32)
    before = _keras_state(model)
    _train_keras(model, hp, _batches(6, 16), micro_batches=4)
    _train_torch(net, hp, _batches(6, 16), micro_batches=4)
    ours, theirs = _keras_state(model), _torch_state(net)
    for name in ours:
        assert _rel(ours[name], theirs[name]) <= 1e-6, name
    # The head's change itself agrees (float32: 1e-4).
    assert _rel(ours["head_kernel"] - before["head_kernel"],
                theirs["head_kernel"] - before["head_kernel"]) <= 1e-4


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-12), ("float32", 1e-6)])
def test_four_micro_batches_equal_one_batch_with_frozen_batchnorm(dtype, tolerance):
    """4 accumulated micro-batches of 8 == one batch of 32 (BatchNorm frozen, so the
    forward pass does not depend on the split). Relative error on the weight change."""
    results = []
    for micro in (4, 1):
        model = _convnet(dtype, bn_trainable=False)
        before = model.get_layer("head").get_weights()[0]
        _train_keras(model, EXACT, _batches(5, 32, dtype), micro_batches=micro)
        results.append((model.get_layer("conv").get_weights()[0],
                        model.get_layer("head").get_weights()[0] - before))
    assert _rel(results[0][0], results[1][0]) <= tolerance
    assert _rel(results[0][1], results[1][1]) <= tolerance


def test_batchnorm_sees_micro_batches():
    """With BatchNorm training, 4 x 8 differs from 1 x 32 (the statistics differ)."""
    outs = []
    for micro in (4, 1):
        model = _convnet("float64")
        _train_keras(model, EXACT, _batches(2, 32, "float64"), micro_batches=micro)
        outs.append(model.get_layer("head").get_weights()[0])
    assert _rel(outs[0], outs[1]) > 1e-6


def test_micro_batch_divisibility_error():
    model = _convnet()
    sgd = optim.PaperSGD()
    sgd.build(model.trainable_variables)
    step = train_step.make_train_step(model, sgd, micro_batches=3)
    x, y, w = next(_batches(1, 16))
    with pytest.raises(ValueError, match="not divisible into 3 micro-batches"):
        step(x, y, w)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    import test_training as tt
    from fer_tf import optim, train_config, train_step, training
    def run(strategy):
        with strategy.scope():
            model = tt._convnet("float32")
            sgd = optim.PaperSGD(tt.EXACT)
            sgd.build(model.trainable_variables)
        step = train_step.make_train_step(model, sgd, micro_batches=4, strategy=strategy)
        data = tf.data.Dataset.from_generator(lambda: tt._batches(4, 16), output_signature=(
            tf.TensorSpec((16, 8, 8, 3), tf.float32), tf.TensorSpec((16,), tf.int32),
            tf.TensorSpec((16,), tf.float32)))
        if strategy.num_replicas_in_sync > 1:
            data = strategy.experimental_distribute_dataset(data)
        losses = [float(step(*batch)["loss"]) for batch in data]
        return model, losses
    one, l1 = run(tf.distribute.get_strategy())
    two, l2 = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
    out = {"replicas": 2, "loss": max(abs(a - b) / abs(b) for a, b in zip(l1, l2))}
    for name in ("conv", "bn", "head"):
        layer_one, layer_two = one.get_layer(name), two.get_layer(name)
        for i, (a, b) in enumerate(zip(layer_one.trainable_weights, layer_two.trainable_weights)):
            out[f"{name}_{i}"] = rel(b.numpy(), a.numpy())
    # The whole loop under the strategy: distributed input, validation, checkpoint, best model.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = tt._convnet("float32")
        sgd = optim.PaperSGD(tt.EXACT)
    config = tt._loop_config(max_updates=4, validate_every=2, micro_batches=2)
    result = training.train_loop(model, sgd, tt._loop_data(), config, sys.argv[2], strategy)
    out["loop_updates"] = result["updates"]
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_mirrored_two_cpus_equals_one_device(tmp_path):
    """MirroredStrategy over 2 logical CPUs (2 micro-batches per replica) equals one
    device with 4 micro-batches: losses and trainable weights within 1e-5 relative
    (float32; summation order differs; measured about 1e-7). BatchNorm moving statistics
    are not compared: each replica updates its own copy from its own micro-batches, as
    per-GPU BatchNorm in PyTorch DDP does (one device applies 4 updates, a replica 2)."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(script), os.path.join(repo, "tests"),
                           str(tmp_path / "loop")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result.pop("loop_updates") == 4
    assert (tmp_path / "loop" / "best_model.keras").is_file()
    for key, value in result.items():
        if key != "replicas":
            assert value <= 1e-5, (key, result)


# ---------------------------------------------------------------------------------------
# The loop: resume, NaN, SIGTERM.


def _loop_data(n_train=40, n_val=24, batch=8, nan=False):
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 255, size=(n_train, SIZE, SIZE, 3)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=n_train).astype(np.int32)
    x[np.arange(n_train), 0, 0, y % 3] = 255.0 * 4  # a learnable cue
    x = x / 255.0
    if nan:
        x[:] = np.nan
    w = paper_class_weights(np.bincount(y, minlength=CLASSES) + 1)[y]

    def train_epoch(epoch, skip):
        ds = tf.data.Dataset.from_tensor_slices((x, y, w))
        return ds.shuffle(n_train, seed=epoch, reshuffle_each_iteration=False).batch(
            batch, drop_remainder=True).skip(skip)

    def validation():
        return tf.data.Dataset.from_tensor_slices((x[:n_val], y[:n_val])).batch(10)

    return training.LoopData(train_epoch, validation, images_per_epoch=n_train)


def _loop_config(**overrides):
    base = dict(batch_size=8, micro_batches=2, max_updates=6, validate_every=3,
                checkpoint_every=1, log_every=2, patience=0, random_init=True,
                lr_head=0.05, lr_backbone=0.01)
    base.update(overrides)
    return train_config.TrainConfig(**base)


def _augmented_model():
    """The tiny expression model with every augmentation on (flip, affine, jitter, erasing)."""
    keras.utils.set_random_seed(2)
    return model_lib.build_expression_model(
        "tiny", augment=True, seed=7,
        augment_options=dict(shift=0.1, scale=0.1, rotation=10, erasing=0.5))


def _run_loop(workdir, config, data=None, build=None):
    model = (build or (lambda: _convnet("float32")))()
    sgd = optim.PaperSGD(config.sgd_hparams())
    result = training.train_loop(model, sgd, data or _loop_data(), config, str(workdir))
    return model, result


def test_resume_equals_uninterrupted_run(tmp_path):
    """6 updates in one go == 3 updates, new objects (as after a kill), resume to 6.
    Same data order (epoch 0 has 5 batches, so the resume skips 3 and crosses an epoch).
    Tolerance: 1e-6 relative (measured: bit-identical on CPU)."""
    full, full_result = _run_loop(tmp_path / "a", _loop_config())
    _run_loop(tmp_path / "b", _loop_config(max_updates=3))
    resumed, resumed_result = _run_loop(tmp_path / "b", _loop_config())
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        assert _rel(b, a) <= 1e-6
    assert resumed_result["updates"] == 6
    assert resumed_result["val_abaw_score"] == pytest.approx(full_result["val_abaw_score"], abs=1e-6)
    assert json.loads((tmp_path / "b" / "result.json").read_text())["finished"] is True
    assert (tmp_path / "b" / "best_model.keras").is_file()


def test_resume_with_augmentation_is_bit_identical(tmp_path):
    """As above with random augmentation in the model: its random state is checkpointed,
    so the resumed run draws what the uninterrupted one drew. Tolerance: none (CPU)."""
    data = _loop_data(n_train=16, n_val=8, batch=4)
    config = _loop_config(batch_size=4, micro_batches=2)
    full, full_result = _run_loop(tmp_path / "a", config, data, _augmented_model)
    _run_loop(tmp_path / "b", _loop_config(batch_size=4, micro_batches=2, max_updates=3),
              data, _augmented_model)
    # What a kill -9 during writes leaves behind; the next start removes it.
    (tmp_path / "b" / ".best_model.keras.77-deadbeef.keras").write_bytes(b"")
    (tmp_path / "b" / "checkpoints" / "ckpt-9_temp").mkdir()
    resumed, resumed_result = _run_loop(tmp_path / "b", config, data, _augmented_model)
    assert not (tmp_path / "b" / ".best_model.keras.77-deadbeef.keras").exists()
    assert not (tmp_path / "b" / "checkpoints" / "ckpt-9_temp").exists()
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(b, a)
    assert resumed_result["val_abaw_score"] == full_result["val_abaw_score"]


def test_nan_loss_names_the_step_and_checkpoint(tmp_path):
    config = _loop_config(max_updates=3)
    with pytest.raises(FloatingPointError, match=r"at update 1 .*last good checkpoint: none"):
        _run_loop(tmp_path, config, _loop_data(nan=True))


def test_sigterm_writes_checkpoint_and_resume_continues(tmp_path):
    config = _loop_config(max_updates=3000, validate_every=10000, checkpoint_every=10000,
                          log_every=1000)
    timer = threading.Timer(4.0, lambda: os.kill(os.getpid(), __import__("signal").SIGTERM))
    timer.start()
    try:
        with pytest.raises(training.TrainingInterrupted) as info:
            _run_loop(tmp_path, config)
    finally:
        timer.cancel()
    step = info.value.step
    assert 0 < step < 3000
    assert os.path.basename(info.value.checkpoint) == f"ckpt-{step}"
    # Resuming continues from there.
    model = _convnet("float32")
    sgd = optim.PaperSGD(config.sgd_hparams())
    result = training.train_loop(model, sgd, _loop_data(), _loop_config(
        max_updates=step + 2, validate_every=10000, checkpoint_every=10000), str(tmp_path))
    assert result["updates"] == step + 2


def test_early_stopping(tmp_path):
    # Learning rates ~0: only BatchNorm statistics move, the score soon stops improving.
    config = _loop_config(max_updates=200, validate_every=2, patience=2, lr_head=1e-12,
                          lr_backbone=0.0)
    _, result = _run_loop(tmp_path, config)
    assert result["stop_reason"] == "early_stopping"
    # Stopped exactly `patience` validations after the best one.
    assert result["updates"] == result["best_step"] + 2 * 2 < 200


def test_config_validation_messages():
    with pytest.raises(ValueError, match="not divisible by --micro_batches=4"):
        train_config.TrainConfig(batch_size=250, random_init=True).validate()
    with pytest.raises(ValueError, match="python -m weights_conversion"):
        train_config.TrainConfig().validate()
    with pytest.raises(FileNotFoundError, match="python -m weights_conversion"):
        train_config.TrainConfig(backbone_weights="/nonexistent.weights.h5").validate()
    with pytest.raises(ValueError, match="divisible by the 3 replicas"):
        train_config.TrainConfig(random_init=True).validate(num_replicas=3)
    with pytest.raises(ValueError, match="expected 7 .one per class"):
        train_config.TrainConfig(random_init=True, class_weights="1,2").validate()
    with pytest.raises(ValueError, match="--xla works on a single device"):
        train_config.TrainConfig(random_init=True, xla=True, distribute="mirrored").validate()
    with pytest.raises(ValueError, match="--center_crop must be >= 0"):
        train_config.TrainConfig(random_init=True, center_crop=-1).validate()
    with pytest.raises(ValueError, match="--zero_init_last .* needs --random_init"):
        train_config.TrainConfig(zero_init_last=True, backbone_weights=__file__).validate()
    with pytest.raises(ValueError, match="--zero_init_last and --init_from contradict"):
        train_config.TrainConfig(random_init=True, zero_init_last=True,
                                 init_from=__file__).validate()


def test_center_crop_reaches_the_model_and_guards_resume():
    config = train_config.TrainConfig(backbone="tiny", random_init=True, center_crop=56)
    model = training.build_model(config)
    assert model.get_layer("backbone").input_shape[1:3] == (56, 56)
    assert model.get_layer("preprocessing").center_crop == 56
    assert train_config.resume_conflicts({"center_crop": "0"}, config) == [
        "--center_crop=56 (the checkpoint's run used 0)"]


def test_zero_init_last_reaches_the_model():
    config = train_config.TrainConfig(backbone="tiny", random_init=True, zero_init_last=True)
    backbone = training.build_model(config).get_layer("backbone")
    scales = [layer.gamma.numpy() for layer in backbone.layers if layer.name.endswith("_bn3")]
    assert len(scales) == 4 and all(not s.any() for s in scales)


def _one_update_change(precision, xla=False):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = _convnet(dtype=None)
        before = model.get_layer("head").get_weights()[0]
        sgd = optim.PaperSGD(EXACT, loss_scale=precision == "mixed_float16")
        sgd.build(model.trainable_variables)
        step = train_step.make_train_step(model, sgd, micro_batches=2, jit_compile=xla)
        for x, y, w in _batches(2, 16):
            out = step(x, y, w)
        return model.get_layer("head").get_weights()[0] - before, float(out["loss"]), sgd
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("precision,tolerance", [("mixed_bfloat16", 5e-2), ("mixed_float16", 5e-3)])
def test_mixed_precision_matches_float32(precision, tolerance):
    """Same updates under mixed precision (loss scaling for float16): the head's change
    within the 16-bit type's precision of float32's (bfloat16 has 8 bits of mantissa)."""
    ref, ref_loss, _ = _one_update_change("float32")
    change, loss, sgd = _one_update_change(precision)
    assert _rel(change, ref) <= tolerance
    assert loss == pytest.approx(ref_loss, rel=tolerance)
    if precision == "mixed_float16":
        assert isinstance(sgd.optimizer, keras.optimizers.LossScaleOptimizer)
        assert float(sgd.current_loss_scale()) > 1


def test_xla_step_matches():
    ref, ref_loss, _ = _one_update_change("float32")
    change, loss, _ = _one_update_change("float32", xla=True)
    assert _rel(change, ref) <= 1e-5  # float32, fused XLA kernels reorder sums
    assert loss == pytest.approx(ref_loss, rel=1e-5)
