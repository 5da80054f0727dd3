"""Knowledge distillation (fer_tf.distill): the loss's arithmetic, the step, the init."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import distill, losses, optim, train_config, training
from fer_tf import model as model_lib
from fer_tf.train_step import make_train_step


def _model(backbone, seed, **contract):
    keras.utils.set_random_seed(seed)
    contract = {"decode_size": 48, "grayscale": True, **contract}
    return model_lib.build_expression_model(backbone, **contract)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A saved random two-blocks-per-stage model: the teacher (and init source)."""
    teacher = _model("fer48_w16x2", seed=1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    teacher.save(path)
    return str(path)


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.uniform(0, 255, (n, 48, 48, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, 7, n).astype("int32"))
    weights = tf.constant(rng.uniform(0.5, 2.0, n).astype("float32"))
    return images, labels, weights


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("weight,temperature,smoothing", [(0.9, 1.0, 0.1), (0.5, 4.0, 0.0)])
def test_distillation_loss_is_the_formula(teacher_file, weight, temperature, smoothing):
    """sum_i w_i [(1-a) CE(smoothed label, s) + a T^2 CE(softmax(t/T), s/T)], computed
    in NumPy from the two networks' logits; tolerance 1e-5 relative (float32)."""
    student = _model("fer48_w16", seed=2)  # augment=False: the view is the image itself
    teacher = distill.load_teacher(teacher_file, student)
    images, labels, weights = _batch()
    got = distill.make_distillation_loss(student, teacher, weight, temperature,
                                         smoothing)(images, labels, weights).numpy()

    s = student(images, training=True).numpy().astype("float64")
    t = teacher(images, training=False).numpy().astype("float64")
    target = np.eye(7)[labels.numpy()] * (1 - smoothing) + smoothing / 7
    hard = -(target * _log_softmax(s)).sum(1)
    soft_target = np.exp(_log_softmax(t / temperature))
    soft = -(soft_target * _log_softmax(s / temperature)).sum(1)
    expected = (weights.numpy() * ((1 - weight) * hard
                                   + weight * temperature**2 * soft)).sum()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_weight_zero_is_the_plain_cross_entropy(teacher_file):
    student = _model("fer48_w16", seed=2)
    teacher = distill.load_teacher(teacher_file, student)
    images, labels, weights = _batch(seed=3)
    got = distill.make_distillation_loss(student, teacher, 0.0, 1.0, 0.1)(images, labels,
                                                                           weights)
    plain = losses.weighted_cross_entropy_sum(labels, student(images, training=True), weights,
                                              0.1)
    np.testing.assert_allclose(got.numpy(), plain.numpy(), rtol=1e-6)


def _entropy_sum(logits):
    probs = tf.nn.softmax(logits)
    return -tf.reduce_sum(probs * tf.math.log(probs)).numpy()


def test_teacher_and_student_see_the_same_augmented_view(teacher_file):
    """Distilled from an exact copy of itself (BatchNorm frozen in both, weight 1, T 1),
    the loss is the cross-entropy of the student's prediction with itself, i.e. its
    entropy, only if the teacher scored the same augmented view as the student.
    Tolerance 1e-4 relative."""
    student = model_lib.build_expression_model(
        "fer48_w16x2", augment=True, seed=5, decode_size=48, grayscale=True,
        augment_options={"shift": 0.2, "rotation": 20, "erasing": 1.0})
    distill.copy_matching_weights(student, keras.models.load_model(teacher_file))
    student.get_layer("backbone").trainable = False  # BatchNorm in inference mode
    teacher = distill.load_teacher(teacher_file, student)
    images, labels, weights = _batch(seed=6)
    random_state = training.random_state_variables(student)
    assert random_state  # the augmentation's seed generators
    saved = [v.numpy() for v in random_state]
    got = distill.make_distillation_loss(student, teacher, 1.0, 1.0)(
        images, labels, tf.ones_like(weights)).numpy()

    for variable, value in zip(random_state, saved):  # replay the loss's draws
        variable.assign(value)
    view = student.get_layer("preprocessing")(images, training=True)
    network = student.get_layer("backbone")
    student_logits = student.get_layer("head")(network(view))
    np.testing.assert_allclose(got, _entropy_sum(student_logits), rtol=1e-4)
    # The control: had the teacher scored the plain image, the loss would differ.
    plain = teacher(images, training=False)
    crossed = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(
        labels=tf.nn.softmax(plain), logits=student_logits)).numpy()
    assert abs(crossed - got) > 1e-3 * abs(got)


def test_a_train_step_moves_the_student_and_never_the_teacher(teacher_file):
    student = _model("fer48_w16", seed=2)
    teacher = distill.load_teacher(teacher_file, student)
    before_student = [v.numpy() for v in student.trainable_variables]
    before_teacher = [v.numpy() for v in teacher.weights]
    sgd = optim.PaperSGD(optim.SGDHyperParams(0.1, 0.1, 0.9, 5e-4), learning_rate=0.1)
    sgd.build(student.trainable_variables)
    step = make_train_step(student, sgd, 2, loss_sum_fn=distill.make_distillation_loss(
        student, teacher, 0.9, 2.0))
    out = step(*_batch(seed=4))
    assert np.isfinite(out["loss"].numpy())
    moved = [not np.array_equal(b, v.numpy())
             for b, v in zip(before_student, student.trainable_variables)]
    assert all(moved)
    for b, v in zip(before_teacher, teacher.weights):
        np.testing.assert_array_equal(b, v.numpy())


def test_copy_matching_weights_takes_the_first_blocks_of_a_deeper_model(teacher_file):
    source = keras.models.load_model(teacher_file)
    student = _model("fer48_w16", seed=3)  # one block per stage: layerN_0 of the source
    other_width = _model("fer48_w24", seed=3)
    copied = distill.copy_matching_weights(student, source)
    assert copied == len(student.weights)
    for name in ("layer1_0_conv1", "layer4_0_conv5"):
        for mine, theirs in zip(student.get_layer("backbone").get_layer(name).weights,
                                source.get_layer("backbone").get_layer(name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for mine, theirs in zip(student.get_layer("head").weights, source.get_layer("head").weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    kernel = other_width.get_layer("backbone").get_layer("conv1").kernel.numpy()
    distill.copy_matching_weights(other_width, source)  # shapes differ: left alone
    np.testing.assert_array_equal(
        other_width.get_layer("backbone").get_layer("conv1").kernel.numpy(), kernel)


def test_a_teacher_for_other_faces_is_refused(teacher_file):
    colour_student = _model("fer48_w16", seed=2, grayscale=False)
    with pytest.raises(ValueError, match="--teacher=.*grayscale is True"):
        distill.load_teacher(teacher_file, colour_student)


@pytest.mark.parametrize("field,value,match", [
    ("distill_weight", 1.5, "--distill_weight"), ("distill_temperature", 0.0,
                                                 "--distill_temperature")])
def test_bad_distillation_settings_name_their_flag(field, value, match):
    config = train_config.TrainConfig(dataset="demo", random_init=True, **{field: value})
    with pytest.raises(ValueError, match=match):
        config.validate()


@pytest.mark.parametrize("flag", ["teacher", "init_from"])
def test_a_missing_teacher_or_init_file_names_its_flag(tmp_path, flag):
    config = train_config.TrainConfig(dataset="demo", random_init=True,
                                      **{flag: str(tmp_path / "absent.keras")})
    with pytest.raises(FileNotFoundError, match=f"--{flag}=.*absent.keras.*not found"):
        config.validate()


def test_training_with_a_teacher_starts_from_init_from_and_runs(tmp_path):
    """train_and_evaluate with --teacher and --init_from on the demo data: with the
    backbone's rate at 0 its kernels stay those of the --init_from model exactly, while the
    head (rate > 0) moves; the run finishes and writes its best model."""
    keras.utils.set_random_seed(7)
    source = model_lib.build_expression_model("tiny", decode_size=64)
    path = tmp_path / "source.keras"
    source.save(path)
    config = train_config.TrainConfig(
        dataset="demo", data_dir=str(tmp_path / "demo"), image_size=64, backbone="tiny",
        random_init=True, batch_size=8, micro_batches=2, lr_head=0.05, lr_backbone=0.0,
        class_weights="none", max_updates=3, validate_every=3, checkpoint_every=3,
        max_val_images=32, eval_batch_size=32, teacher=str(path), init_from=str(path))
    result = training.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["finished"] and result["updates"] == 3
    trained = model_lib.load_expression_model(tmp_path / "run" / "best_model.keras")
    for name in ("conv1", "layer1_0_conv2", "layer4_0_conv5"):
        for mine, theirs in zip(trained.get_layer("backbone").get_layer(name).weights,
                                source.get_layer("backbone").get_layer(name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert not np.array_equal(trained.get_layer("head").kernel.numpy(),
                              source.get_layer("head").kernel.numpy())
