"""Accuracy trial (README, "FER2013 trials"): average the last checkpoints of a cosine
schedule. Not part of the package: it tests whether averaging is worth building in.

Restores the model of each given training checkpoint, scores each on the carved
validation split (never PublicTest), then averages their trainable weights, recomputes
BatchNorm's moving statistics for the average with one pass over an epoch of augmented
training batches (a cumulative mean, as torch.optim.swa_utils.update_bn does) and scores
the average. Float32; the network and augmentation are the FER2013 configs'.

    python docs/trials/average_checkpoints.py DATA_DIR BACKBONE OUT.keras CKPT [CKPT ...]
    e.g. python docs/trials/average_checkpoints.py ../shared/data/fer2013 fer48_w16x2 \
        runs/avg.keras runs/fer2013_fast/checkpoints/ckpt-3500 \
        runs/fer2013_fast/checkpoints/ckpt-4000
"""

import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as python -m fer_tf.train does

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fer_tf import training  # noqa: E402
from fer_tf import validation as validation_lib  # noqa: E402
from fer_tf.train_config import TrainConfig  # noqa: E402

# The epoch whose batch order the BatchNorm pass reads: one training never reaches.
CALIBRATION_EPOCH = 999


def _config(data_dir, backbone):
    return TrainConfig(
        dataset="fer2013", data_dir=data_dir, image_size=48, cache_images=True, grayscale=True,
        crop_margin=0.0, backbone=backbone, precision="float32", random_init=True,
        batch_size=128, micro_batches=1, aug_shift=0.1, aug_scale=0.1, aug_rotation=10,
        aug_erasing=0.25, seed=1)


def batch_norm_layers(model):
    """Every BatchNormalization layer of the model, nested ones included."""
    return [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
            if isinstance(layer, keras.layers.BatchNormalization)]


def recompute_batch_norm_statistics(model, data):
    """Moving mean/variance of every BatchNorm = the mean over one epoch's batches."""
    batch_norms = batch_norm_layers(model)
    momenta = [layer.momentum for layer in batch_norms]
    for layer in batch_norms:
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
    for k, (images, _, _) in enumerate(data.train_epoch(CALIBRATION_EPOCH, 0), start=1):
        for layer in batch_norms:
            layer.momentum = (k - 1) / k  # the k-th batch's share is 1/k
        model(images, training=True)
    for layer, momentum in zip(batch_norms, momenta):
        layer.momentum = momentum


def main(data_dir, backbone, out_path, checkpoints):
    config = _config(data_dir, backbone)
    keras.utils.set_random_seed(config.seed)
    data = training.make_loop_data(config)
    model = training.build_model(config)
    predict = validation_lib.make_predict_fn(model)

    def score(tag):
        scores = validation_lib.evaluate(predict, data.validation(), config.num_classes)
        print(f"{tag}: accuracy {scores['accuracy']:.4f} macro F1 {scores['f1']:.4f} "
              f"ABAW {scores['abaw_score']:.4f}", flush=True)

    weights = []
    for path in checkpoints:
        tf.train.Checkpoint(model=model).read(path).expect_partial()
        score(os.path.basename(path))
        weights.append([v.numpy() for v in model.trainable_variables])
    for variable, values in zip(model.trainable_variables, zip(*weights)):
        variable.assign(np.mean(values, axis=0))
    recompute_batch_norm_statistics(model, data)
    score(f"average of {len(checkpoints)}")
    model.save(out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
