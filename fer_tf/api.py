"""The few lines FER users expect: load a model, pass a photo, get each face's emotions.

    from fer_tf import ExpressionRecognizer
    recognizer = ExpressionRecognizer()            # the shipped FER2013 model
    for face in recognizer.detect_emotions("photo.jpg"):
        print(face["box"], face["label"], face["emotions"])

Faces are found with MTCNN and cropped as the model's training faces were framed
(its stored crop margin); probabilities come from the model in one batch per image.
"""

import os
from typing import Dict, List, Optional, Union

import numpy as np
from absl import logging

from fer_tf import faces as faces_lib
from fer_tf import inference, pretrained
from fer_tf import predict as predict_lib


class ExpressionRecognizer:
    """Detects faces in RGB images and classifies their expressions.

    Args:
      model: None (the shipped default, "fer2013"), a shipped model's name, a
        training workdir, a `.keras` file or an exported SavedModel directory.
      detect_faces: False treats every image as one face crop.
      flip_average: average each face's probabilities with its mirror image's.
      min_face_size: smallest face side (pixels) the detector looks for.
      margin: crop enlargement per side; None is the model's own.
      precision: "auto" (bfloat16 where the CPU has it natively), "float32" or
        "bfloat16"; the loaded choice is ``classifier.precision``.
    """

    def __init__(self, model: Optional[str] = None, detect_faces: bool = True,
                 flip_average: bool = False, min_face_size: int = 20,
                 margin: Optional[float] = None, precision: str = "auto"):
        logging.info("fer_tf: model %s", pretrained.describe(model))
        self.classifier = inference.load_classifier(model, flip_average=flip_average,
                                                    precision=precision)
        detector = faces_lib.FaceDetector(min_face_size=min_face_size) if detect_faces else None
        self._predictor = predict_lib.FacePredictor(self.classifier, detector, margin)

    @property
    def class_names(self):
        """The model's classes, in the order of its outputs."""
        return self.classifier.class_names

    def detect_emotions(self, image: Union[str, os.PathLike, np.ndarray]) -> List[Dict]:
        """Every face in one image, in reading order.

        Args:
          image: a file path, or a uint8 RGB (or gray) array [H, W(, C)].

        Returns:
          one dict per face: ``box`` (x, y, w, h in pixels), ``score`` (detector
          confidence; 1.0 without detection), ``emotions`` {class name: probability}
          and ``label`` (the most probable class).
        """
        if isinstance(image, (str, os.PathLike)):
            image = faces_lib.read_image_rgb(image)
        image = faces_lib.as_rgb(image)
        found = self._predictor.predict_frames([image])[0]
        return [{"box": (box.x, box.y, box.w, box.h), "score": float(box.score),
                 "emotions": {n: float(p) for n, p in zip(self.class_names, probs)},
                 "label": self.class_names[int(np.argmax(probs))]}
                for box, probs in found]

    def top_emotion(self, image) -> Optional[tuple]:
        """(label, probability) of the largest face, or None when no face is found."""
        found = self.detect_emotions(image)
        if not found:
            return None
        face = max(found, key=lambda f: f["box"][2] * f["box"][3])
        return face["label"], face["emotions"][face["label"]]
