"""fer_tf: facial expression recognition in the wild with TensorFlow/Keras.

Reimplements Cafarelli et al., "Expression Recognition Analysis in the Wild"
(ABAW 2020): a VGGFace2 SE-ResNet-50 fine-tuned on Aff-Wild2 + ExpW for the
seven basic expressions, scored by 0.67 * macro-F1 + 0.33 * accuracy.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import fer_tf` does not load TensorFlow (and its start-up cost) by itself.
    if name == "ExpressionRecognizer":
        from fer_tf.api import ExpressionRecognizer
        return ExpressionRecognizer
    raise AttributeError(f"module 'fer_tf' has no attribute {name!r}")
