"""Foreground-oversampling patch sampler: exact, in-bounds, seeded crops and padding of small images."""

import numpy as np
import pytest

from unet_core.augment import PAD_LABEL
from unet_core.patches import sample_patches


def blob_image(height: int = 120, width: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """A single 4x4 blob of class 3 in a 120x90 image: uniform 32x32 crops hold it about 5% of the time."""
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3)).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[100:104, 5:9] = 3
    return image, mask


def test_crops_are_exact_and_inside_the_image():
    image, mask = blob_image()
    images, masks, offsets = sample_patches(image, mask, 32, 50, np.random.default_rng(1))
    assert images.shape == (50, 32, 32, 3) and masks.shape == (50, 32, 32)
    for crop, crop_mask, (top, left) in zip(images, masks, offsets):
        assert 0 <= top <= 120 - 32 and 0 <= left <= 90 - 32
        assert np.array_equal(crop, image[top : top + 32, left : left + 32])
        assert np.array_equal(crop_mask, mask[top : top + 32, left : left + 32])


@pytest.mark.parametrize("share", [0.0, 0.33, 0.5, 1.0])
def test_foreground_share_is_honoured(share):
    image, mask = blob_image()
    _, masks, _ = sample_patches(image, mask, 32, 400, np.random.default_rng(2), foreground_share=share)
    holding = (masks == 3).any(axis=(1, 2)).mean()
    assert holding >= share
    if share == 0.0:
        assert holding < 0.15  # uniform crops: the blob is rare, so the share above is the sampler's doing


def test_ignore_index_is_not_a_foreground_class():
    image, mask = blob_image()
    mask[:10, :10] = 255
    _, masks, _ = sample_patches(image, mask, 32, 200, np.random.default_rng(3), 1.0, ignore_index=255)
    assert (masks == 3).any(axis=(1, 2)).all()


def test_same_seed_same_crops():
    image, mask = blob_image()
    first = sample_patches(image, mask, 16, 20, np.random.default_rng(4))
    second = sample_patches(image, mask, 16, 20, np.random.default_rng(4))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("ignore_index", [None, 11])
def test_small_images_are_padded_with_the_label_training_skips(ignore_index):
    image, mask = np.full((10, 20, 3), 7, np.uint8), np.ones((10, 20), np.uint8)
    images, masks, offsets = sample_patches(image, mask, 32, 5, np.random.default_rng(5), ignore_index=ignore_index)
    assert images.shape == (5, 32, 32, 3) and masks.shape == (5, 32, 32) and not offsets.any()
    assert np.array_equal(images[0, :10, :20], image) and not images[0, 10:].any() and not images[0, :, 20:].any()
    assert np.array_equal(masks[0, :10, :20], mask)
    assert (masks[0, 10:] == PAD_LABEL).all() and (masks[0, :, 20:] == PAD_LABEL).all()


def test_the_class_centred_on_is_rare_whatever_its_label():
    """Label 0 is the rare class here (ISBI's membranes, CamVid's sky are 0): crops centre on it, and
    never on the image's most common class."""
    image, mask = blob_image()
    mask = np.where(mask == 3, 0, 1).astype(np.uint8)
    _, masks, _ = sample_patches(image, mask, 32, 200, np.random.default_rng(6), foreground_share=1.0)
    assert (masks == 0).any(axis=(1, 2)).all()


def test_padding_is_never_a_class_to_centre_on():
    """A narrow image padded to the patch's width: every centred crop holds the one rare blob, none is
    centred on the padding instead."""
    image, mask = np.zeros((100, 20, 3), np.uint8), np.ones((100, 20), np.uint8)
    mask[:4, :4] = 3
    _, masks, offsets = sample_patches(image, mask, 32, 100, np.random.default_rng(7), foreground_share=1.0)
    assert (masks == 3).any(axis=(1, 2)).all() and not offsets.any()
