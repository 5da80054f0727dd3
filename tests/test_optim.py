"""PaperSGD equals torch.optim.SGD with two parameter groups and coupled weight decay."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from fer_tf import losses, optim
from fer_tf.data.class_weights import paper_class_weights

CLASSES = 7
FEATURES = 8


def _keras_mlp(dtype):
    inputs = keras.Input((FEATURES,), dtype=dtype)
    x = keras.layers.Dense(16, activation="relu", name="fc1", dtype=dtype)(inputs)
    x = keras.layers.Dense(16, activation="relu", name="fc2", dtype=dtype)(x)
    logits = keras.layers.Dense(CLASSES, name="head", dtype=dtype)(x)
    return keras.Model(inputs, logits)


def _torch_twin(model, dtype):
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, CLASSES)).to(dtype)
    with torch.no_grad():
        for linear, name in zip((net[0], net[2], net[4]), ("fc1", "fc2", "head")):
            kernel, bias = model.get_layer(name).get_weights()
            linear.weight.copy_(torch.tensor(kernel.T))
            linear.bias.copy_(torch.tensor(bias))
    return net


def _weights(model):
    return [model.get_layer(n).get_weights()[i] for n in ("fc1", "fc2", "head") for i in (0, 1)]


def _torch_weights(net):
    return [p.detach().numpy().T if p.ndim == 2 else p.detach().numpy()
            for layer in (net[0], net[2], net[4]) for p in (layer.weight, layer.bias)]


def _batches(n_steps, dtype, batch=32, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n_steps):
        yield (rng.normal(size=(batch, FEATURES)).astype(dtype),
               rng.integers(0, CLASSES, size=batch))


def _run_pair(dtype, hp, steps=6, variant="exact"):
    """Trains the Keras model and its torch twin; returns (initial, keras, torch) weights."""
    keras.utils.set_random_seed(1)
    model = _keras_mlp(dtype)
    net = _torch_twin(model, torch.float64 if dtype == "float64" else torch.float32)
    initial = _weights(model)
    class_w = paper_class_weights([50, 9, 4, 6, 30, 15, 12]).astype(dtype)

    variables = model.trainable_variables
    mask = optim.head_mask(model, variables)
    sgd = optim.PaperSGD(hp)
    if variant == "keras_weight_decay":  # Keras' own (decoupled) weight decay
        sgd = optim.PaperSGD(optim.SGDHyperParams(hp.lr_head, hp.lr_backbone, hp.momentum, 0.0))
        sgd.optimizer = keras.optimizers.SGD(hp.lr_head, momentum=hp.momentum,
                                             weight_decay=hp.weight_decay)
    sgd.build(variables)

    head_params = list(net[4].parameters())
    backbone_params = list(net[0].parameters()) + list(net[2].parameters())
    torch_opt = torch.optim.SGD([
        {"params": backbone_params, "lr": hp.lr_backbone},
        {"params": head_params, "lr": hp.lr_head}],
        lr=hp.lr_head, momentum=hp.momentum, weight_decay=hp.weight_decay)
    torch_loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_w))

    for x, y in _batches(steps, dtype):
        with tf.GradientTape() as tape:
            loss = losses.weighted_cross_entropy(y, model(x, training=True), class_w[y])
        grads = tape.gradient(loss, variables)
        if variant == "scale_before_l2":
            ratio = hp.lr_backbone / hp.lr_head
            grads = [g if h else g * ratio for g, h in zip(grads, mask)]
            grads = [g + hp.weight_decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]
            sgd.optimizer.apply(grads, variables)
        else:
            sgd.apply(grads, variables, mask)

        torch_opt.zero_grad()
        torch_loss(net(torch.tensor(x)), torch.tensor(y)).backward()
        torch_opt.step()
    return initial, _weights(model), _torch_weights(net)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# Large enough learning rates that float64 weight *changes* are measurable, with a
# group ratio near the paper's 1e-3. Learning rates and momentum are exact binary
# fractions because Keras keeps the learning rate in a float32 variable and converts the
# momentum through float32 (0.9 would already be 2.6e-8 off in a float64 comparison).
STRONG = optim.SGDHyperParams(lr_head=0.5, lr_backbone=0.5 / 1024, momentum=0.875,
                              weight_decay=0.05)


@pytest.mark.parametrize("hp", [STRONG, optim.SGDHyperParams(0.125, 0.125, 0.75, 0.005)])
def test_weight_changes_equal_torch_in_float64(hp):
    initial, ours, theirs = _run_pair("float64", hp)
    for w0, k, t in zip(initial, ours, theirs):
        # Compare the change, not the weights: a wrong backbone update at lr 1e-6 would
        # hide inside a weight-level comparison. float64 both sides: 1e-12 relative
        # (measured 3e-16).
        assert _rel(k - w0, t - w0) <= 1e-12


def test_paper_learning_rates_float32_weights_within_1e6():
    # float32 both sides, the paper's settings (measured 1.7e-7).
    initial, ours, theirs = _run_pair("float32", optim.SGDHyperParams())
    for w0, k, t in zip(initial, ours, theirs):
        assert _rel(k, t) <= 1e-6
    # The head moved measurably and in the same way (float32 change: 1e-4 relative).
    assert _rel(ours[4] - initial[4], theirs[4] - initial[4]) <= 1e-4
    assert np.linalg.norm(ours[4] - initial[4]) > 1e-4


@pytest.mark.parametrize("variant", ["keras_weight_decay", "scale_before_l2"])
def test_wrong_variants_are_detected(variant):
    """Regression guard: the two tempting shortcuts differ from PyTorch."""
    initial, ours, theirs = _run_pair("float64", STRONG, variant=variant)
    errors = [_rel(k - w0, t - w0) for w0, k, t in zip(initial, ours, theirs)]
    assert max(errors) > 1e-3


def test_replica_share_of_l2_and_loss_scale():
    v = tf.Variable([[2.0, -4.0]])
    head = tf.Variable([1.0])
    sgd = optim.PaperSGD(optim.SGDHyperParams(1e-3, 1e-6, 0.9, 0.01))
    g = [tf.constant([[1.0, 1.0]]), tf.constant([3.0])]
    out = sgd.coupled_gradients(g, [v, head], [False, True], num_replicas=2, loss_scale=8.0)
    # backbone: (g + wd/R * scale * w) * lr_b/lr_h; head: g + wd/R * scale * w
    np.testing.assert_allclose(out[0].numpy(), [[(1 + 0.04 * 2) * 1e-3, (1 - 0.04 * 4) * 1e-3]],
                               rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), [3.04], rtol=1e-6)


def test_head_mask_errors():
    model = _keras_mlp("float32")
    assert optim.head_mask(model) == [False, False, False, False, True, True]
    with pytest.raises(ValueError, match="no layer named 'classifier'"):
        optim.head_mask(model, head_name="classifier")
    with pytest.raises(ValueError, match="lr_head must be > 0"):
        optim.PaperSGD(optim.SGDHyperParams(lr_head=0.0))


def test_cosine_schedule_warms_up_then_decays_to_zero():
    schedule = optim.learning_rate_schedule(0.1, "cosine", total_updates=100, warmup_updates=10)
    rates = np.array([float(schedule(step)) for step in range(101)])
    # Linear warm-up from peak/warmup to the peak, then cosine: tolerance 1e-7 (float32).
    np.testing.assert_allclose(rates[:11], 0.01 + 0.09 * np.arange(11) / 10, atol=1e-7)
    np.testing.assert_allclose(rates[10:], 0.05 * (1 + np.cos(np.pi * np.arange(91) / 90)),
                               atol=1e-7)
    assert optim.learning_rate_schedule(0.1, "constant", 100, 0) == 0.1
    with pytest.raises(ValueError, match="shorter than the run"):
        optim.learning_rate_schedule(0.1, "cosine", 10, 10)
    with pytest.raises(ValueError, match="schedule must be one of"):
        optim.learning_rate_schedule(0.1, "step", 10, 0)


def test_scheduled_sgd_follows_the_rate_and_keeps_the_backbone_ratio():
    head = keras.Variable(np.ones(3, np.float32))
    body = keras.Variable(np.ones(3, np.float32))
    schedule = optim.learning_rate_schedule(0.1, "cosine", total_updates=4, warmup_updates=2)
    sgd = optim.PaperSGD(optim.SGDHyperParams(0.1, 0.01, 0.0, 0.0), learning_rate=schedule)
    sgd.build([head, body])
    grads = [tf.ones(3), tf.ones(3)]
    for step in range(3):
        before_head, before_body = head.numpy().copy(), body.numpy().copy()
        lr = float(schedule(step))
        assert sgd.learning_rates() == pytest.approx((lr, lr / 10), rel=1e-6)
        sgd.apply(grads, [head, body], [True, False])
        # Without momentum each update moves by lr_t (head) and lr_t / 10 (backbone).
        np.testing.assert_allclose(before_head - head.numpy(), lr, rtol=1e-5)
        np.testing.assert_allclose(before_body - body.numpy(), lr / 10, rtol=1e-5)
