"""Soft Dice and the CE+Dice default: values, ignored pixels, reduced precision, and no collapse to background."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet_core.losses import segmentation_loss
from unet_core.metrics import confusion_matrix, iou_per_class
from unet_core.training import DistributedTrainer, LossConfig, ModelConfig, OptimizerConfig

LABELS = np.array([[[0, 1, 1], [2, 0, 1]], [[2, 2, 0], [0, 1, 0]]])


def test_dice_is_zero_for_a_perfect_prediction_and_one_for_a_wrong_one():
    dice = segmentation_loss("dice", 3)
    perfect = np.eye(3, dtype=np.float32)[LABELS]
    wrong = np.eye(3, dtype=np.float32)[(LABELS + 1) % 3]
    assert np.allclose(dice(LABELS, perfect).numpy(), 0.0, atol=1e-5)
    assert np.allclose(dice(LABELS, wrong).numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["dice", "ce+dice"])
@pytest.mark.parametrize("ignore_index", [2, 255])
def test_ignored_pixels_change_neither_label_nor_prediction_side(name, ignore_index):
    loss = segmentation_loss(name, 3, ignore_index=ignore_index)
    labels = LABELS.copy()
    labels[0, 0, 2] = labels[1, 1, 1] = ignore_index
    probabilities = np.random.default_rng(0).dirichlet(np.ones(3), LABELS.shape).astype(np.float32)
    changed = probabilities.copy()
    changed[0, 0, 2] = changed[1, 1, 1] = [0.0, 0.0, 1.0]
    assert np.allclose(loss(labels, probabilities).numpy(), loss(labels, changed).numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ["dice", "ce+dice"])
def test_bfloat16_probabilities_give_a_finite_float32_loss(name):
    probabilities = tf.cast(np.eye(3)[LABELS] * 0.98 + 0.01, tf.bfloat16)
    value = segmentation_loss(name, 3, ignore_index=2)(LABELS, probabilities)
    assert value.dtype == tf.float32 and np.all(np.isfinite(value.numpy()))


def small_squares(rng: np.random.Generator, count: int, size: int = 32, side: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """One red 7x7 square per grey 32x32 image: about 5% foreground, where plain CE settles on background."""
    images = rng.integers(60, 120, (count, size, size, 3)).astype(np.uint8)
    masks = np.zeros((count, size, size), np.uint8)
    for image, mask, (top, left) in zip(images, masks, rng.integers(0, size - side, (count, 2))):
        mask[top : top + side, left : left + side] = 1
        image[top : top + side, left : left + side] = (200, 60, 60)
    return images, masks


def foreground_iou_after(loss: str, epochs: int, seed: int, batch: int = 2) -> float:
    keras.utils.set_random_seed(seed)
    images, masks = small_squares(np.random.default_rng(seed), 32)
    trainer = DistributedTrainer(
        tf.distribute.get_strategy(),
        ModelConfig(2, 32, 8),
        LossConfig(loss),
        OptimizerConfig(learning_rate=5e-3, schedule="constant"),
        batch,
        epochs * len(images) // batch,
    )
    for _ in range(epochs):
        for start in range(0, len(images), batch):
            trainer.train_step(images[start : start + batch], masks[start : start + batch])
    return float(iou_per_class(confusion_matrix(masks, trainer.predict(images), 2))[1])


def test_the_default_loss_finds_rare_foreground():
    assert LossConfig().name == "ce+dice"
    assert foreground_iou_after(LossConfig().name, epochs=3, seed=5) > 0.0
