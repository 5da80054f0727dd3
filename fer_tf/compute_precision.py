"""Which floating-point type a model computes in, and whether this CPU has bfloat16.

CPUs with AVX-512 BF16 or AMX-BF16 multiply bfloat16 natively: there a network
computing in bfloat16 (weights kept in float32, as Keras's ``mixed_bfloat16`` policy
does) runs markedly faster than in float32 (the README's benchmark tables). Elsewhere
oneDNN emulates bfloat16 and it is several times slower, so inference picks it only
where it is native ("auto"), the way OpenVINO's CPU plugin does.

Only the backbone computes in bfloat16: the preprocessing (resize, grayscale of uint8
pixels) and the classifier head stay float32, and probabilities are float32.

Keras's GlobalAveragePooling2D takes the mean of a bfloat16 map in float32: it casts the
whole map up and the mean back down, an extra pass over every SE block's activations.
On CPUs with native bfloat16 the copy therefore squeezes with a full-window
AveragePooling2D, which oneDNN runs on the bfloat16 map directly (it sums in float32
inside the kernel, so the result is the same mean rounded once to bfloat16). Only
there: on other CPUs TensorFlow runs the pool with its own kernel, which sums in
bfloat16 and can miss the mean of a 24x24 map by more than the mean itself, so a
forced bfloat16 keeps Keras's pool.
"""

from typing import Optional

import keras
import tensorflow as tf

PRECISIONS = ("auto", "float32", "bfloat16")
# The --precision help of the entry points that load a model (predict, evaluate).
FLAG_HELP = ("Network arithmetic: auto (bfloat16 on CPUs with AVX-512 BF16 or AMX, else "
             "float32), float32 or bfloat16 (.keras models).")
_CPUINFO = "/proc/cpuinfo"


def cpu_has_native_bfloat16(cpuinfo: str) -> Optional[bool]:
    """Whether a Linux ``/proc/cpuinfo`` text lists a bfloat16 instruction set
    (AVX-512 BF16 or AMX-BF16); None when it lists no CPU flags at all."""
    flag_lines = [line for line in cpuinfo.splitlines() if line.startswith("flags")]
    if not flag_lines:
        return None
    cpu_flags = set(flag_lines[0].partition(":")[2].split())
    return bool(cpu_flags & {"avx512_bf16", "amx_bf16"})


def this_cpu_has_native_bfloat16() -> Optional[bool]:
    """`cpu_has_native_bfloat16` of this machine; None where /proc/cpuinfo is missing."""
    try:
        with open(_CPUINFO) as f:
            return cpu_has_native_bfloat16(f.read())
    except OSError:
        return None


def resolve(precision: str) -> str:
    """"float32" or "bfloat16" for a precision of `PRECISIONS`.

    "auto" is bfloat16 on a CPU-only machine whose CPU has native bfloat16, float32
    anywhere else (GPUs, other CPUs, unknown CPUs).

    Raises:
      ValueError: a precision not in `PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "float32"
    return "bfloat16" if this_cpu_has_native_bfloat16() else "float32"


def training_policy(precision: str) -> str:
    """The Keras dtype policy a training `--precision` stands for.

    "auto" is "mixed_bfloat16" where `resolve("auto")` picks bfloat16 (a CPU-only
    machine with native bfloat16), "float32" elsewhere: emulated bfloat16 trains
    several times slower than float32. Other values are Keras policies already.
    """
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if resolve("auto") == "bfloat16" else "float32"


def _with_policy(layer, policy: str):
    config = layer.get_config()
    config["dtype"] = policy
    return layer.__class__.from_config(config)


def _in_bfloat16(layer):
    """`layer` rebuilt with the mixed_bfloat16 policy; on CPUs with native bfloat16, a
    keepdims global average pool over a static map becomes the equal full-window
    AveragePooling2D (see the module doc)."""
    if (isinstance(layer, keras.layers.GlobalAveragePooling2D) and layer.keepdims
            and this_cpu_has_native_bfloat16()):
        window = tuple(layer.input.shape[1:3])
        if layer.data_format == "channels_last" and None not in window:
            return keras.layers.AveragePooling2D(window, name=layer.name, dtype="mixed_bfloat16")
    return _with_policy(layer, "mixed_bfloat16")


def backbone_in_bfloat16(model: keras.Model) -> keras.Model:
    """A copy of a functional model whose nested models (the backbone) compute in bfloat16.

    The copy's variables are float32 and equal to ``model``'s; the top-level layers
    (input, preprocessing, head) keep their own dtype policies. Build it before
    `fer_tf.fold_batch_norm.fold_batch_norms`, which keeps each layer's policy.
    """
    def clone_layer(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=_in_bfloat16)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy
