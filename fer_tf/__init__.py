"""fer_tf: facial expression recognition in the wild with TensorFlow/Keras.

Reimplements Cafarelli et al., "Expression Recognition Analysis in the Wild"
(ABAW 2020): a VGGFace2 SE-ResNet-50 fine-tuned on Aff-Wild2 + ExpW for the
seven basic expressions, scored by 0.67 * macro-F1 + 0.33 * accuracy.
"""

import os as _os
import platform as _platform

__version__ = "0.1.0"

# TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with AVX-512 VNNI
# or newer; on AVX2-only x86 CPUs (many AMD EPYC cloud VMs) it falls back to Eigen,
# whose convolution gradients are much slower here (the README's benchmark table).
# Takes effect only if TensorFlow is imported after fer_tf; a value the user set wins.
if _platform.machine().lower() in ("x86_64", "amd64"):
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def __getattr__(name):
    # Lazy, so `import fer_tf` (and `python -m fer_tf.train`) does not load TensorFlow
    # before the entry point has set it up.
    if name == "ExpressionRecognizer":
        from fer_tf.api import ExpressionRecognizer
        return ExpressionRecognizer
    raise AttributeError(f"module 'fer_tf' has no attribute {name!r}")
