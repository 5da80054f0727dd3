"""The paper's train step: one optimiser update from one global batch.

`make_train_step` splits the batch into micro-batches inside the step (BatchNorm sees
batch_size / micro_batches images at a time), sums their gradients and applies
PyTorch's two-group coupled-L2 SGD (`fer_tf.optim.PaperSGD`) once; the loss is the
class-weighted cross-entropy with PyTorch's reduction over the *whole* batch
(docs/training_recipe.md).
"""

from typing import Callable, Optional

import keras
import tensorflow as tf

from fer_tf import losses, optim
from fer_tf.train_config import check_replica_split


def _split_micro_batches(x, n):
    """[B, ...] -> [n, B/n, ...], keeping static shapes when B is static."""
    b = x.shape[0]
    if b is not None and b % n:
        raise ValueError(f"per-replica batch of {b} is not divisible into {n} micro-batches")
    inner = [d if d is not None else tf.shape(x)[i + 1] for i, d in enumerate(x.shape[1:])]
    return tf.reshape(x, [n, -1 if b is None else b // n] + inner)


def _replica_step(sgd, variables, is_head, local_micro, replicas, loss_dtype, loss_sum_fn):
    """One replica's share of an update: its micro-batches, their summed gradients, and
    `PaperSGD` (which sums over replicas). Returns ``fn(images, labels, weights) ->
    (loss, grad_norm)``."""
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
                loss = tf.cast(loss_sum_fn(mb_images[i], mb_labels[i], mb_weights[i]),
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
    return replica_step


def make_train_step(model: keras.Model, sgd: optim.PaperSGD, micro_batches: int,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    jit_compile: bool = False, head_name: str = "head",
                    label_smoothing: float = 0.0,
                    loss_sum_fn: Optional[Callable] = None) -> Callable:
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
      loss_sum_fn: ``fn(images, labels, weights)`` -> the weighted sum of per-example
        losses of a micro-batch, running the model itself (e.g.
        `fer_tf.distill.make_distillation_loss`); default: the model's weighted
        cross-entropy with ``label_smoothing``.

    Returns:
      ``step(images, labels, weights) -> {"loss": float32, "grad_norm": float32}``;
      the inputs are global-batch tensors, or per-replica values from
      ``strategy.experimental_distribute_dataset`` (or
      ``distribute_datasets_from_function``, multi-worker). ``loss`` is the batch's weighted CE,
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

    if loss_sum_fn is None:
        def loss_sum_fn(images, labels, weights):
            return losses.weighted_cross_entropy_sum(
                labels, model(images, training=True), weights, label_smoothing)
    replica_step = _replica_step(sgd, variables, is_head, local_micro, replicas, loss_dtype,
                                 loss_sum_fn)

    # A one-replica Mirrored or multi-worker strategy still needs strategy.run (its
    # variables may only be updated in a replica context).
    if replicas == 1 and not isinstance(strategy, (tf.distribute.MirroredStrategy,
                                                   tf.distribute.MultiWorkerMirroredStrategy)):
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
