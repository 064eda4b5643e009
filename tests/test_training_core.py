"""Augmentation and losses: fast checks without Ray."""

import numpy as np
import pytest
import tensorflow as tf

from unet_core.augment import PAD_LABEL, Augmentation, augment_pair
from unet_core.losses import segmentation_loss
from unet_core.recipe import LOSSES

COLORS = np.array([[0, 0, 0], [200, 40, 40], [40, 200, 40]], np.uint8)


def test_geometry_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (8, 8)).astype(np.uint8).repeat(12, 0).repeat(12, 1)  # 96x96 in 12x12 cells
    image = COLORS[mask]
    geometry_only = Augmentation(0.6, 1.6, True, 0.0, 0.0)
    for _ in range(20):
        out_image, out_mask = augment_pair(image, mask, rng, geometry_only)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        labelled = out_mask != PAD_LABEL
        # wherever the mask keeps a label, the pixel's nearest palette colour is that label's
        # (only blurred edges may differ; a shifted mask would agree on about a third)
        distance = np.abs(out_image[labelled][:, None, :].astype(int) - COLORS[None].astype(int)).sum(-1)
        assert (distance.argmin(1) == out_mask[labelled]).mean() > 0.95
        assert set(np.unique(out_mask)) <= {0, 1, 2, PAD_LABEL}  # nearest-neighbour: no invented labels


def test_photometric_jitter_leaves_the_mask_alone():
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, (32, 32)).astype(np.uint8)
    image, out_mask = augment_pair(COLORS[mask], mask, rng, Augmentation(1.0, 1.0, False, 0.2, 0.3))
    assert np.array_equal(out_mask, mask) and not np.array_equal(image, COLORS[mask])


def probabilities_for(labels: np.ndarray, confidence: float, classes: int = 3) -> tf.Tensor:
    onehot = np.eye(classes)[labels]
    return tf.constant(onehot * confidence + (1 - onehot) * (1 - confidence) / (classes - 1), tf.float32)


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_and_padding_pixels_do_not_count(name):
    labels = np.array([[[0, 1], [2, 1]]])
    probabilities = probabilities_for(labels, 0.9).numpy()
    loss = segmentation_loss(name, 3, ignore_index=2)
    base = float(loss(labels, probabilities)[0])
    corrupted = labels.copy()
    corrupted[0, 1, 0] = PAD_LABEL  # a padding label anywhere changes nothing ...
    changed = probabilities.copy()
    changed[0, 1, 0] = [0.0, 0.0, 1.0]  # ... and neither does the prediction on an ignored pixel
    assert float(loss(corrupted, probabilities)[0]) == pytest.approx(float(loss(labels, changed)[0]))
    assert float(loss(labels, changed)[0]) == pytest.approx(base)


def test_cross_entropy_values_and_class_weights():
    labels = np.array([[[0, 1]]])
    probabilities = tf.constant([[[[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]]]], tf.float32)
    plain = float(segmentation_loss("ce", 3)(labels, probabilities)[0])
    assert plain == pytest.approx((-np.log(0.5) - np.log(0.8)) / 2, rel=1e-5)
    weighted = float(segmentation_loss("ce", 3, class_weights=[3.0, 1.0, 1.0])(labels, probabilities)[0])
    assert weighted == pytest.approx((-3 * np.log(0.5) - np.log(0.8)) / 4, rel=1e-5)
    focal = float(segmentation_loss("focal", 3)(labels, probabilities)[0])
    assert focal == pytest.approx((-(0.5**2) * np.log(0.5) - (0.2**2) * np.log(0.8)) / 2, rel=1e-5)


def test_better_predictions_have_lower_loss():
    labels = np.random.default_rng(2).integers(0, 3, (2, 8, 8))
    for name in LOSSES:
        loss = segmentation_loss(name, 3)
        assert np.all(
            loss(labels, probabilities_for(labels, 0.95)).numpy() < loss(labels, probabilities_for(labels, 0.5)).numpy()
        )


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_step_keeps_float32_master_weights(precision):
    from unet_core.training import DistributedTrainer, LossConfig, ModelConfig, OptimizerConfig

    trainer = DistributedTrainer(
        tf.distribute.get_strategy(),
        ModelConfig(3, 32, 4, precision),
        LossConfig(),
        OptimizerConfig(),
        global_batch=4,
        total_steps=3,
    )
    convolutions = [layer for layer in trainer.model.layers if layer.name.startswith("block")]
    assert {layer.compute_dtype for layer in convolutions} == {precision}
    assert trainer.model.output.dtype == "float32"  # softmax, and so the loss, in float32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (4, 32, 32), dtype=np.uint8)
    before = trainer.model.get_weights()
    losses = [trainer.train_step(images, masks) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert {v.dtype for v in trainer.model.trainable_variables} == {"float32"}
    assert trainer.step == 3
    assert all(w.dtype == np.float32 for w in trainer.model.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(before, trainer.model.get_weights()))
