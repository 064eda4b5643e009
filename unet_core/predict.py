"""Batched inference: uint8 images in, class masks, confidences and quality signals out.

One compiled `tf.function` with a fixed batch shape serves every call (the last partial batch
is padded), so TensorFlow traces once per process and never again.
"""

from __future__ import annotations

from typing import NamedTuple

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import numpy as np
import tensorflow as tf

from unet_core.artifact import Artifact
from unet_core.precision import model_in_precision, resolve_precision
from unet_core.quality import BINS, PERCENTILE, SIGNALS, UNCERTAIN_BELOW


class Prediction(NamedTuple):
    masks: np.ndarray
    """(N, H, W) uint8 class ids."""
    confidence: np.ndarray
    """(N, H, W) float32: the winning class's probability."""
    signals: np.ndarray
    """(N, len(SIGNALS)) float64 (`unet_core.quality`), over each image's region."""


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
        images = tf.TensorSpec([batch_size, height, width, 3], tf.uint8)
        self._masks = tf.function(self._masks_graph, input_signature=[images, tf.TensorSpec([batch_size, 4], tf.int32)])
        self._probabilities = tf.function(lambda x: self._passes(x)[0], input_signature=[images])

    def _passes(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """The class probabilities (the mean of the plain and mirrored passes with TTA) and, with
        TTA, where the two passes pick different classes."""
        x = (tf.cast(images, tf.float32) / 255.0 - self._mean) / self._std
        probabilities = tf.cast(self._model(x, training=False), tf.float32)
        if not self.tta:
            return probabilities, None
        flipped = tf.reverse(tf.cast(self._model(tf.reverse(x, axis=[2]), training=False), tf.float32), axis=[2])
        disagreement = tf.not_equal(tf.argmax(probabilities, axis=-1), tf.argmax(flipped, axis=-1))
        return (probabilities + flipped) / 2.0, disagreement

    def _masks_graph(self, images: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        probabilities, disagreement = self._passes(images)
        confidence = tf.reduce_max(probabilities, axis=-1)
        signals = batch_signals(probabilities, confidence, disagreement, boxes)
        return tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8), confidence, signals

    def predict(self, images: np.ndarray, boxes: np.ndarray | None = None) -> Prediction:
        """Masks, confidences and signals of uint8 images of the model's input size; each image's
        signals are taken inside its box (top, left, height, width: the letterbox's inner image;
        default: the whole input)."""
        if boxes is None:
            boxes = np.tile(np.array([0, 0, *images.shape[1:3]], np.int32), (len(images), 1))
        outputs = self._batched(self._masks, images, boxes.astype(np.int32))
        if not outputs:
            empty = (0,) + images.shape[1:3]
            return Prediction(np.zeros(empty, np.uint8), np.zeros(empty, np.float32), np.zeros((0, len(SIGNALS))))
        return Prediction(*(np.concatenate(parts) for parts in zip(*outputs)))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax outputs (N, H, W, classes) float32, for blending overlapping tiles."""
        outputs = self._batched(self._probabilities, images)
        return np.concatenate(outputs) if outputs else np.zeros(images.shape[:3] + (self.num_classes,), np.float32)

    def _batched(self, function, *arrays: np.ndarray) -> list:
        results = []
        for start in range(0, len(arrays[0]), self.batch_size):
            chunks = [array[start : start + self.batch_size] for array in arrays]
            output = function(*(_pad_batch(chunk, self.batch_size) for chunk in chunks))
            if isinstance(output, tuple):
                results.append(tuple(o.numpy()[: len(chunks[0])] for o in output))
            else:
                results.append(output.numpy()[: len(chunks[0])])
        return results


def _inside(boxes: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """(N, H, W) float32: 1 inside each image's box, 0 on the letterbox's padding."""
    rows, cols = tf.range(shape[0])[None, :, None], tf.range(shape[1])[None, None, :]
    top, left, height, width = (boxes[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return tf.cast(inside, tf.float32)


def batch_signals(
    probabilities: tf.Tensor, confidence: tf.Tensor, disagreement: tf.Tensor | None, boxes: tf.Tensor
) -> tf.Tensor:
    """`unet_core.quality.quality_signals` of a batch of probability maps (N, H, W, C) and their
    maxima (the confidence the masks come with), each inside its box, on the device that made them:
    (N, len(SIGNALS)) float64, and only these cross to the CPU."""
    inside = _inside(boxes, tf.shape(probabilities)[1:3])
    count = tf.reduce_sum(inside, axis=[1, 2])

    def mean(values: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.cast(values, tf.float32) * inside, axis=[1, 2]) / tf.maximum(count, 1.0)

    classes = tf.cast(tf.shape(probabilities)[-1], tf.float32)
    entropy = -tf.reduce_sum(tf.math.xlogy(probabilities, probabilities), axis=-1) / tf.math.log(classes)
    flips = tf.fill(tf.shape(count), float("nan")) if disagreement is None else mean(disagreement)
    signals = [
        mean(confidence),
        _low_percentile(confidence, inside, count),
        mean(confidence < UNCERTAIN_BELOW),
        mean(entropy),
        flips,
    ]
    return tf.cast(tf.stack(signals, axis=1), tf.float64)


def _low_percentile(confidence: tf.Tensor, inside: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """Per image, the lower edge of the confidence bin where the pixels inside reach PERCENTILE."""
    images = tf.shape(confidence)[0]
    bins = tf.clip_by_value(tf.cast(tf.floor(confidence * BINS), tf.int32), 0, BINS - 1)
    slots = tf.reshape(bins + tf.range(images)[:, None, None] * BINS, [-1])  # one run of BINS per image
    counted = tf.math.bincount(
        slots, weights=tf.reshape(inside, [-1]), minlength=images * BINS, maxlength=images * BINS
    )
    histogram = tf.reshape(counted, [images, BINS])
    reached = tf.cumsum(histogram, axis=1) >= PERCENTILE * count[:, None]
    return tf.cast(tf.argmax(tf.cast(reached, tf.int32), axis=1), tf.float32) / BINS


def _pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    if len(images) == batch_size:
        return images
    padding = np.zeros((batch_size - len(images),) + images.shape[1:], images.dtype)
    return np.concatenate([images, padding])
