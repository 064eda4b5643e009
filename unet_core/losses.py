"""Segmentation losses that ignore padding and void labels and honour class weights.

Each loss returns one value per image, so a distributed step can sum them and divide by the
global batch size: every replica then contributes its exact share of the global mean. Dice is the
exception: it is one value for the replica's batch, repeated per image, so a replica weighs in by
its share of the global batch (nnU-Net's unsynchronised batch Dice under DDP does the same).
"""

from __future__ import annotations

from typing import Callable

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import tensorflow as tf

from unet_core.recipe import LOSSES

EPSILON = 1e-7
DICE_SMOOTH = 1e-5
"""nnU-Net's: only keeps Dice finite; a large term (1.0) would discount the rare classes Dice is for."""


def segmentation_loss(
    name: str,
    num_classes: int,
    class_weights: list[float] | None = None,
    ignore_index: int | None = None,
    focal_gamma: float = 2.0,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A function (labels (B,H,W) int, probabilities (B,H,W,C)) -> loss per image (B,).

    Labels outside 0..num_classes-1 (letterbox padding) and `ignore_index` count nowhere.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    weights = tf.constant(class_weights or [1.0] * num_classes, tf.float32)
    if weights.shape[0] != num_classes:
        raise ValueError(f"{weights.shape[0]} class weights given for {num_classes} classes")
    class_mask = tf.ones([num_classes], tf.float32)
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        class_mask = tf.tensor_scatter_nd_update(class_mask, [[ignore_index]], [0.0])

    def loss(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
        labels = tf.cast(labels, tf.int32)
        valid = _valid_pixels(labels, num_classes, ignore_index)
        onehot = tf.one_hot(tf.where(valid > 0, labels, 0), num_classes) * valid[..., None]
        probabilities = tf.clip_by_value(tf.cast(probabilities, tf.float32), EPSILON, 1.0)
        parts = []
        if name in ("ce", "ce+dice", "focal"):
            gamma = focal_gamma if name == "focal" else 0.0
            parts.append(_cross_entropy(onehot, probabilities, weights, gamma))
        if name in ("dice", "ce+dice"):
            parts.append(_dice(onehot, probabilities, valid, weights * class_mask))
        return tf.add_n(parts)

    return loss


def _valid_pixels(labels: tf.Tensor, num_classes: int, ignore_index: int | None) -> tf.Tensor:
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid &= labels != ignore_index
    return tf.cast(valid, tf.float32)


def _cross_entropy(onehot: tf.Tensor, probabilities: tf.Tensor, weights: tf.Tensor, gamma: float) -> tf.Tensor:
    """Weighted (focal when gamma > 0) cross-entropy, averaged over each image's valid pixels by weight."""
    true_probability = tf.reduce_sum(onehot * probabilities, axis=-1)
    pixel_weight = tf.reduce_sum(onehot * weights, axis=-1)  # 0 on ignored pixels
    pixel_loss = -tf.math.log(tf.maximum(true_probability, EPSILON))
    if gamma:
        pixel_loss *= tf.pow(1.0 - true_probability, gamma)
    total = tf.reduce_sum(pixel_weight * pixel_loss, axis=[1, 2])
    return total / tf.maximum(tf.reduce_sum(pixel_weight, axis=[1, 2]), EPSILON)


def _dice(onehot: tf.Tensor, probabilities: tf.Tensor, valid: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """1 - weighted mean soft Dice of the classes present in this batch, the batch's value for each image.

    Batch Dice (nnU-Net's `batch_dice`) sums over the whole batch first: per-image Dice of a rare class
    swings between 0 and 1 on a few pixels, and classes absent from every label would dilute the mean
    with easy near-1 terms. A batch with every pixel ignored contributes 0, not a constant without gradient.
    """
    probabilities = probabilities * valid[..., None]
    intersection = tf.reduce_sum(onehot * probabilities, axis=[0, 1, 2])
    total = tf.reduce_sum(onehot + probabilities, axis=[0, 1, 2])
    dice = (2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)
    present = weights * tf.cast(tf.reduce_sum(onehot, axis=[0, 1, 2]) > 0, tf.float32)
    loss = tf.math.divide_no_nan(tf.reduce_sum((1.0 - dice) * present), tf.reduce_sum(present))
    return tf.fill(tf.shape(onehot)[:1], loss)
