"""The paper's optimiser, exactly as ``torch.optim.SGD`` computes it.

PyTorch (the paper): two parameter groups (new head lr 1e-3, pretrained backbone lr 1e-6),
momentum 0.9, ``weight_decay=0.005``. PyTorch's weight decay is *coupled* L2: it adds
``wd * w`` to the gradient before the momentum buffer::

    g' = g + wd * w;  buf = m * buf + g';  w -= lr_group * buf

Keras' own ``weight_decay`` is decoupled (about 9% off on the backbone after 25 steps,
docs/training_recipe.md), so it is not used. Instead one Keras SGD with the head's
learning rate receives gradients that already contain the L2 term, and the backbone's
gradients are multiplied by ``lr_backbone / lr_head`` *after* the L2 term is added. Keras
SGD (``v = m*v - lr*g; w += v``) equals PyTorch's update for a constant learning rate
(``v = -lr * buf``), and scaling a group's gradient by ``r`` scales its buffer by ``r``,
which is the same as giving the group the learning rate ``r * lr_head``.

Under ``tf.distribute`` Keras sums the replicas' gradients, so each replica adds
``wd / R * w``: the L2 term is counted once, not R times.
"""

import dataclasses
from typing import Sequence

import keras
import tensorflow as tf


def _as(value, dtype):
    """Python numbers go straight to ``dtype`` (tf.cast would round them via float32)."""
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


@dataclasses.dataclass(frozen=True)
class SGDHyperParams:
    """The paper's optimiser settings (defaults are the paper's)."""

    lr_head: float = 1e-3
    lr_backbone: float = 1e-6
    momentum: float = 0.9
    weight_decay: float = 5e-3

    def validate(self):
        """Raises ValueError naming the bad value and what is expected."""
        if not self.lr_head > 0:
            raise ValueError(f"lr_head must be > 0 (got {self.lr_head}); the backbone "
                             "learning rate is applied as a ratio of it")
        if self.lr_backbone < 0:
            raise ValueError(f"lr_backbone must be >= 0 (got {self.lr_backbone}); "
                             "use 0 to freeze the backbone's weights")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (got {self.momentum})")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0 (got {self.weight_decay})")


def head_mask(model: keras.Model, variables: Sequence = None, head_name: str = "head"):
    """For each variable, whether it belongs to the layer named ``head_name``.

    Args:
      model: a Keras model with a layer named ``head_name`` (the new last layer).
      variables: the variables to classify (default ``model.trainable_variables``).
      head_name: name of the head layer.

    Returns:
      list of bool, True for head variables (learning rate ``lr_head``).

    Raises:
      ValueError: if the model has no such layer or it has no trainable variables.
    """
    try:
        head = model.get_layer(head_name)
    except ValueError as e:
        names = [layer.name for layer in model.layers]
        raise ValueError(f"model {model.name!r} has no layer named {head_name!r} (layers: "
                         f"{names}); the training step gives that layer lr_head") from e
    head_ids = {id(v) for v in head.trainable_variables}
    if not head_ids:
        raise ValueError(f"layer {head_name!r} has no trainable variables")
    if variables is None:
        variables = model.trainable_variables
    return [id(v) in head_ids for v in variables]


SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(peak: float, kind: str = "constant", total_updates: int = 0,
                           warmup_updates: int = 0):
    """The head's learning rate: a constant (the paper) or linear warm-up + cosine to 0.

    Under a schedule, Keras SGD multiplies each update's gradient by that update's rate
    before the momentum buffer (``v = m v - lr_t g``), PyTorch multiplies the buffer
    (``w -= lr_t buf``); the two agree for a constant rate, the paper's case.

    Raises:
      ValueError: unknown kind, or warm-up not shorter than the run.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"learning-rate schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind == "constant":
        return peak
    if not 0 <= warmup_updates < total_updates:
        raise ValueError(f"warm-up of {warmup_updates} updates must be >= 0 and shorter than "
                         f"the run ({total_updates} updates)")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak if not warmup_updates else peak / warmup_updates,
        decay_steps=total_updates - warmup_updates, alpha=0.0,
        warmup_target=peak if warmup_updates else None, warmup_steps=warmup_updates)


class PaperSGD:
    """One Keras SGD applying PyTorch's two-group, coupled-L2 SGD update.

    Create it (and call ``build``) inside the distribution strategy's scope. The wrapped
    Keras optimiser is ``self.optimizer`` (checkpoint that object); under
    ``loss_scale=True`` it is a ``keras.optimizers.LossScaleOptimizer`` (mixed_float16).
    """

    def __init__(self, hparams: SGDHyperParams = SGDHyperParams(), loss_scale: bool = False,
                 learning_rate=None):
        """``learning_rate``: the head's rate or a schedule (`learning_rate_schedule`);
        None is ``hparams.lr_head``. The backbone follows it at ``lr_backbone / lr_head``."""
        hparams.validate()
        self.hparams = hparams
        sgd = keras.optimizers.SGD(
            learning_rate=hparams.lr_head if learning_rate is None else learning_rate,
            momentum=hparams.momentum)
        self.loss_scale = loss_scale
        self.optimizer = keras.optimizers.LossScaleOptimizer(sgd) if loss_scale else sgd

    def build(self, variables):
        """Creates the momentum buffers (before restoring a checkpoint into them)."""
        self.optimizer.build(variables)

    @property
    def iterations(self):
        """Number of applied updates (skipped float16 overflow steps do not count)."""
        return self.optimizer.iterations

    def scale_loss(self, loss):
        """Multiplies the loss by the dynamic loss scale (identity without loss scaling)."""
        return self.optimizer.scale_loss(loss) if self.loss_scale else loss

    def current_loss_scale(self):
        """The factor ``scale_loss`` applied (1.0 without loss scaling), float32."""
        if not self.loss_scale:
            return tf.constant(1.0, tf.float32)
        return tf.cast(self.optimizer.dynamic_scale, tf.float32)

    def coupled_gradients(self, grads, variables, is_head, num_replicas: int = 1,
                          loss_scale=1.0):
        """Loss gradients -> the gradients one Keras SGD at ``lr_head`` must apply.

        Args:
          grads: this replica's gradients of the (possibly scaled) loss; None entries
            stay None (PyTorch skips parameters whose ``.grad`` is None: no decay, no
            momentum step).
          variables: the matching variables.
          is_head: ``head_mask(...)`` for those variables.
          num_replicas: number of replicas whose gradients the optimiser sums.
          loss_scale: the factor the loss was multiplied by (the L2 term is scaled to
            match, so the optimiser's unscaling leaves exactly ``g + wd*w``).

        Returns:
          list of gradient tensors.
        """
        hp = self.hparams
        ratio = hp.lr_backbone / hp.lr_head
        decay = hp.weight_decay / num_replicas
        out = []
        for g, v, head in zip(grads, variables, is_head):
            if g is None:
                out.append(None)
                continue
            if isinstance(g, tf.IndexedSlices):
                g = tf.convert_to_tensor(g)
            if decay:
                g = g + _as(decay * loss_scale, g.dtype) * tf.cast(tf.convert_to_tensor(v), g.dtype)
            if not head:
                # After the L2 term: PyTorch multiplies (g + wd*w) by the group's lr.
                g = g * _as(ratio, g.dtype)
            out.append(g)
        return out

    def apply(self, grads, variables, is_head, num_replicas: int = 1):
        """Adds coupled L2, scales the backbone group, and applies one update.

        Call in a replica context (inside ``strategy.run``, or anywhere without a
        strategy). ``grads`` are gradients of ``scale_loss(loss)``.
        """
        # Without loss scaling keep Python floats: a float32 1.0 would round wd in float64.
        scale = self.current_loss_scale() if self.loss_scale else 1.0
        coupled = self.coupled_gradients(grads, variables, is_head, num_replicas,
                                         loss_scale=scale)
        pairs = [(g, v) for g, v in zip(coupled, variables) if g is not None]
        if not pairs:
            raise ValueError("no variable received a gradient: the loss does not depend "
                             "on any trainable variable")
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])

    def learning_rates(self):
        """(lr_head, lr_backbone) of the next update, for logging."""
        sgd = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        head = float(keras.ops.convert_to_numpy(sgd.learning_rate))
        return head, head * self.hparams.lr_backbone / self.hparams.lr_head
