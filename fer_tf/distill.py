"""Knowledge distillation: train a smaller expression model to match a trained one.

The student's loss on each training image mixes the usual (label-smoothed) cross-entropy
with the cross-entropy against the teacher's probabilities on the *same augmented image*
(Hinton et al. 2015; "consistent teaching" in Beyer et al. 2022: teacher and student see
one view, so the teacher's answer fits exactly what the student is shown):

    loss_i = (1 - a) * CE(label_i, s_i) + a * T^2 * CE(softmax(t_i / T), s_i / T)

with ``a`` = ``--distill_weight``, ``T`` = ``--distill_temperature``, ``s``/``t`` the
student's and teacher's logits. The augmentation lives in the student's preprocessing
layer, so the step runs that layer once and feeds its output to both networks; the
teacher runs in inference mode (its BatchNorm statistics fixed) and gets no gradient.

`copy_matching_weights` starts a student from a trained model where layer names and
shapes agree, e.g. a shallower SE-ResNet of the same width from the first blocks of each
stage of a deeper one (`fer_tf.senet` names blocks ``layer{stage}_{index}``).
"""

from typing import Callable

import keras
import tensorflow as tf
from absl import logging

from fer_tf import losses, pretrained
from fer_tf import model as model_lib


def load_trained(path: str) -> keras.Model:
    """A trained expression model from a .keras file, a training workdir or a shipped name."""
    return model_lib.load_expression_model(model_lib.resolve_model_file(pretrained.resolve(path)))


def load_teacher(path: str, student: keras.Model) -> keras.Model:
    """Loads a teacher model (file, workdir or shipped name) and checks it fits the student.

    Raises:
      ValueError: the teacher expects other faces (decode size, gray or colour, classes)
        or another network input size than the student's preprocessing produces.
    """
    teacher = load_trained(path)
    teacher.trainable = False
    ours, theirs = model_lib.input_contract(student), model_lib.input_contract(teacher)
    for field in ("decode_size", "grayscale", "class_names"):
        if getattr(ours, field) != getattr(theirs, field):
            raise ValueError(
                f"--teacher={path}: its {field} is {getattr(theirs, field)!r}, the student's "
                f"{getattr(ours, field)!r}; distil from a model trained on the same faces")
    ours_size = student.get_layer("preprocessing").size
    theirs_size = teacher.get_layer("preprocessing").size
    if ours_size != theirs_size:
        raise ValueError(f"--teacher={path}: its network input is {theirs_size}x{theirs_size}, "
                         f"the student's {ours_size}x{ours_size}")
    logging.info("distilling from %s (%s)", pretrained.describe(path), teacher.name)
    return teacher


def copy_matching_weights(student: keras.Model, source: keras.Model) -> int:
    """Assigns every student variable the source variable of the same path and shape.

    Returns:
      how many variables were copied.

    Raises:
      ValueError: nothing matched (the models share no layer of equal shape).
    """
    by_path = {v.path: v for v in source.weights}
    copied = 0
    for variable in student.weights:
        match = by_path.get(variable.path)
        if match is not None and tuple(match.shape) == tuple(variable.shape):
            variable.assign(tf.cast(match, variable.dtype))
            copied += 1
    if not copied:
        raise ValueError(f"no variable of {source.name!r} matches one of {student.name!r} "
                         "in name and shape")
    logging.info("initialised %d of %d variables of %s from %s", copied, len(student.weights),
                 student.name, source.name)
    return copied


def _network(model: keras.Model) -> Callable:
    """The expression model after its preprocessing: network input -> logits."""
    backbone, head = model.get_layer("backbone"), model.get_layer("head")
    return lambda x, training: head(backbone(x, training=training))


def make_distillation_loss(student: keras.Model, teacher: keras.Model, weight: float,
                           temperature: float, label_smoothing: float = 0.0) -> Callable:
    """The train step's loss numerator with a teacher (see the module docstring).

    Returns:
      ``loss(images, labels, weights)``: the sum over the batch of ``weights_i * loss_i``,
      as `fer_tf.losses.weighted_cross_entropy_sum` (the step divides by the weight sum).
    """
    preprocess = student.get_layer("preprocessing")
    student_net, teacher_net = _network(student), _network(teacher)

    def loss(images, labels, weights):
        x = preprocess(images, training=True)  # one augmented view for both
        logits = student_net(x, training=True)
        teacher_logits = tf.stop_gradient(teacher_net(x, training=False))
        dtype = losses.loss_dtype(logits)
        hard = losses.per_example_cross_entropy(labels, logits, label_smoothing)
        soft = tf.nn.softmax_cross_entropy_with_logits(
            labels=tf.nn.softmax(tf.cast(teacher_logits, dtype) / temperature),
            logits=tf.cast(logits, dtype) / temperature)
        per_example = (1.0 - weight) * hard + weight * temperature**2 * soft
        return tf.reduce_sum(tf.cast(weights, dtype) * per_example)

    return loss
