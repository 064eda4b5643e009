"""Mixed precision shared by inference and training: which precision 'auto' means on this device, and
the same model graph under a mixed policy.
"""

from __future__ import annotations

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import keras
import tensorflow as tf


def resolve_precision(precision: str) -> str:
    """'auto' means the fastest precision the device runs natively: bfloat16 on CPUs with bf16
    instructions, float16 on GPUs, float32 otherwise."""
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "float16"
    return "bfloat16" if _cpu_has_bf16() else "float32"


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def model_in_precision(model: keras.Model, precision: str) -> keras.Model:
    """The same graph and weights under a mixed-precision policy.

    A .keras file pins every layer's dtype, so the replica is cloned layer by layer from the loaded
    model's own configs: rebuilding it from a few build arguments would silently drop any other one
    (an activation, say) the artifact was trained with.
    """
    if precision == "float32":
        return model
    outputs = {id(tensor) for tensor in model.outputs}
    # Keras' mixed-precision guidance: the layers that make the outputs (the softmax) stay in float32.
    float32 = {id(layer) for layer in model.layers if id(layer.output) in outputs}
    replica = keras.models.clone_model(
        model,
        clone_function=lambda layer: _layer_in_dtype(
            layer, "float32" if id(layer) in float32 else f"mixed_{precision}"
        ),
    )
    replica.set_weights(model.get_weights())
    return replica


def _layer_in_dtype(layer: keras.layers.Layer, dtype: str) -> keras.layers.Layer:
    if isinstance(layer, keras.layers.Lambda):
        return layer  # stateless, and rebuilding its code would need unsafe deserialisation a second time
    config = layer.get_config()
    config["dtype"] = dtype
    return layer.__class__.from_config(config)
