"""Batched inference: uint8 images in, class masks and confidences out.

One compiled `tf.function` with a fixed batch shape serves every call (the last partial batch
is padded), so TensorFlow traces once per process and never again.
"""
from __future__ import annotations

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import numpy as np
import tensorflow as tf

from unet_core.artifact import Artifact
from unet_core.precision import model_in_precision, resolve_precision


def configure_tensorflow(threads: int | None = None) -> None:
    """Size TF's thread pools to this process's CPU share and let GPUs grow memory on demand.

    Must run before TensorFlow executes its first op in the process.
    """
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


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
