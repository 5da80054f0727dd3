"""Accuracy trial (README, "FER2013 trials"): stochastic weight averaging (SWA) from the
shipped model, in float32. Not part of the package: it tests whether an SWA phase after
`configs/fer2013.cfg`'s cosine schedule is worth building into training.

From the shipped weights, SGD continues at a constant learning rate with the shipped
recipe's augmentation, label smoothing and weight decay; every 100 updates the trainable
weights join a running average. Every EVAL_EVERY updates it scores on the carved
validation split (never PublicTest) the shipped model (update 0), the live SGD weights,
and the average, after recomputing BatchNorm's moving statistics for the averaged weights
with one pass over an epoch of augmented training batches (a cumulative mean, as
PyTorch's torch.optim.swa_utils.update_bn does), and saves the averaged model.

    python docs/trials/swa_from_shipped.py DATA_DIR OUT_DIR LR UPDATES EVAL_EVERY
    e.g. python docs/trials/swa_from_shipped.py ../shared/data/fer2013 runs/swa 0.02 4000 1000
"""

import os
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as python -m fer_tf.train does

import keras  # noqa: E402

from fer_tf import distill, optim, training  # noqa: E402
from fer_tf import validation as validation_lib  # noqa: E402
from fer_tf.train_config import TrainConfig  # noqa: E402
from fer_tf.train_step import make_train_step  # noqa: E402

# The sibling script (this folder is on sys.path when a script here runs).
from average_checkpoints import batch_norm_layers, recompute_batch_norm_statistics  # noqa: E402

SNAPSHOT_EVERY = 100


def main(data_dir, out_dir, lr, updates, eval_every):
    config = TrainConfig(
        dataset="fer2013", data_dir=data_dir, image_size=48, cache_images=True, grayscale=True,
        crop_margin=0.0, backbone="fer48_d50_w16", precision="float32", random_init=True,
        batch_size=128, micro_batches=1, lr_head=lr, lr_backbone=lr, weight_decay=5e-4,
        lr_schedule="constant", label_smoothing=0.1, class_weights="none", aug_shift=0.1,
        aug_scale=0.1, aug_rotation=10, aug_erasing=0.25, max_updates=updates, seed=1)
    keras.utils.set_random_seed(config.seed)
    data = training.make_loop_data(config)
    model = training.build_model(config)
    # Every variable, by layer name: the same architecture as the shipped model.
    assert distill.copy_matching_weights(model, distill.load_trained(None)) == len(model.weights)
    sgd = optim.PaperSGD(config.sgd_hparams(), learning_rate=lr)
    sgd.build(model.trainable_variables)
    step = make_train_step(model, sgd, 1, label_smoothing=config.label_smoothing)
    predict = validation_lib.make_predict_fn(model)
    statistics = [v for layer in batch_norm_layers(model)
                  for v in (layer.moving_mean, layer.moving_variance)]
    weights = model.trainable_variables

    def score(tag):
        scores = validation_lib.evaluate(predict, data.validation(), config.num_classes)
        print(f"{tag}: accuracy {scores['accuracy']:.4f} macro F1 {scores['f1']:.4f} "
              f"ABAW {scores['abaw_score']:.4f}", flush=True)

    def score_the_average(average, count, update):
        live = [v.numpy() for v in weights + statistics]
        score(f"SGD weights at update {update}")
        for variable, value in zip(weights, average):
            variable.assign(value)
        recompute_batch_norm_statistics(model, data)
        score(f"average of {count} snapshots at update {update}")
        model.save(os.path.join(out_dir, f"swa_lr{lr}_{update}.keras"))
        for variable, value in zip(weights + statistics, live):
            variable.assign(value)

    os.makedirs(out_dir, exist_ok=True)
    score("shipped (update 0)")
    average, count, update, epoch, start = None, 0, 0, 0, time.time()
    while update < updates:
        for images, labels, sample_weights in data.train_epoch(epoch, 0):
            step(images, labels, sample_weights)
            update += 1
            if update % SNAPSHOT_EVERY == 0:
                count += 1
                current = [v.numpy() for v in weights]
                average = current if average is None else [
                    a + (c - a) / count for a, c in zip(average, current)]
            if update % 100 == 0:
                rate = config.batch_size * update / (time.time() - start)
                print(f"update {update} {rate:.0f} images/s", flush=True)
            if update % eval_every == 0:
                score_the_average(average, count, update)
            if update >= updates:
                break
        epoch += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
