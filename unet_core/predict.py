"""Batched inference: uint8 images in, class masks and confidences out.

One compiled `tf.function` with a fixed batch shape serves every call (the last partial batch
is padded), so TensorFlow traces once per process and never again.
"""
from __future__ import annotations

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import keras
import numpy as np
import tensorflow as tf

from unet_core.artifact import Artifact


def configure_tensorflow(threads: int | None = None) -> None:
    """Size TF's thread pools to this process's CPU share and let GPUs grow memory on demand.

    Must run before TensorFlow executes its first op in the process.
    """
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


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
    replica = keras.models.clone_model(model, clone_function=lambda layer: _layer_in_dtype(
        layer, "float32" if id(layer) in float32 else f"mixed_{precision}"))
    replica.set_weights(model.get_weights())
    return replica


def _layer_in_dtype(layer: keras.layers.Layer, dtype: str) -> keras.layers.Layer:
    if isinstance(layer, keras.layers.Lambda):
        return layer  # stateless, and rebuilding its code would need unsafe deserialisation a second time
    config = layer.get_config()
    config["dtype"] = dtype
    return layer.__class__.from_config(config)


class Predictor:
    """Runs one artifact's model on batches of uint8 images of the model's input size."""

    def __init__(self, artifact: Artifact, batch_size: int, precision: str = "auto", tta: bool = False):
        self.precision = resolve_precision(precision)
        self.batch_size = batch_size
        self.num_classes = artifact.metadata.num_classes
        self.tta = tta
        self._model = model_in_precision(artifact.model, self.precision)
        height, width = artifact.metadata.input_size
        self.input_size = height
        norm = artifact.metadata.normalization
        self._mean = tf.constant(norm["mean"], tf.float32)
        self._std = tf.constant(norm["std"], tf.float32)
        signature = [tf.TensorSpec([batch_size, height, width, 3], tf.uint8)]
        self._masks = tf.function(self._masks_graph, input_signature=signature)
        self._probabilities = tf.function(self._probabilities_graph, input_signature=signature)

    def _probabilities_graph(self, images: tf.Tensor) -> tf.Tensor:
        x = (tf.cast(images, tf.float32) / 255.0 - self._mean) / self._std
        probabilities = tf.cast(self._model(x, training=False), tf.float32)
        if self.tta:
            flipped = tf.cast(self._model(tf.reverse(x, axis=[2]), training=False), tf.float32)
            probabilities = (probabilities + tf.reverse(flipped, axis=[2])) / 2.0
        return probabilities

    def _masks_graph(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        probabilities = self._probabilities_graph(images)
        return tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8), tf.reduce_max(probabilities, axis=-1)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks (N, H, W) uint8 and the winning class's softmax probability (N, H, W) float32."""
        outputs = self._batched(self._masks, images)
        if not outputs:
            empty = (0,) + images.shape[1:3]
            return np.zeros(empty, np.uint8), np.zeros(empty, np.float32)
        return np.concatenate([m for m, _ in outputs]), np.concatenate([c for _, c in outputs])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax outputs (N, H, W, classes) float32, for blending overlapping tiles."""
        outputs = self._batched(self._probabilities, images)
        return np.concatenate(outputs) if outputs else np.zeros(images.shape[:3] + (self.num_classes,), np.float32)

    def _batched(self, function, images: np.ndarray) -> list:
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            output = function(_pad_batch(chunk, self.batch_size))
            if isinstance(output, tuple):
                results.append(tuple(o.numpy()[: len(chunk)] for o in output))
            else:
                results.append(output.numpy()[: len(chunk)])
        return results


def _pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    if len(images) == batch_size:
        return images
    padding = np.zeros((batch_size - len(images),) + images.shape[1:], images.dtype)
    return np.concatenate([images, padding])
