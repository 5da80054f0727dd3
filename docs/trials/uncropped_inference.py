"""Accuracy trial (README, "FER2013 trials"): does a model trained with --center_crop
score better on the whole face than on the central crop it was trained on?

A network trained on random 40x40 crops of 48x48 faces has only ever seen faces at their
native scale, so its weights also run on the full 48x48 face (a global pool ends the
backbone): the "train small, test large" effect of Touvron et al. (FixRes, 2019). This
writes a copy of the model without the crop (the same weights in a backbone built for
48x48), to score beside the original with `python -m fer_tf.evaluate` on the validation
split (never PublicTest):

    python docs/trials/uncropped_inference.py MODEL.keras OUT.keras
    python -m fer_tf.evaluate --model=OUT.keras --dataset=fer2013 \
        --data_dir=../shared/data/fer2013 --split=validation
"""

import sys

from fer_tf import model as model_lib


def uncropped_copy(model):
    """The same model and weights with the backbone fed the whole (uncropped) input."""
    face = model.get_layer("preprocessing")
    config = face.get_config()
    backbone_name = model.name.removeprefix("fer_")  # build_expression_model's naming
    copy = model_lib.build_expression_model(
        backbone_name, num_classes=model.get_layer("head").units,
        decode_size=config["decode_size"], grayscale=config["grayscale"],
        class_names=config["class_names"], crop_margin=config["crop_margin"])
    for name in ("backbone", "head"):
        copy.get_layer(name).set_weights(model.get_layer(name).get_weights())
    return copy


def main(source, destination):
    model = model_lib.load_expression_model(model_lib.resolve_model_file(source))
    crop = model.get_layer("preprocessing").center_crop
    if not crop:
        sys.exit(f"{source}: the model has no center crop; nothing to compare")
    uncropped_copy(model).save(destination)
    side = model.get_layer("preprocessing").size
    print(f"wrote {destination}: {model.name} trained on {crop}x{crop} centre crops, now fed "
          f"the whole {side}x{side} face")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
