"""Training augmentation applied identically to an image and its mask.

Geometry (scale, crop, flip) moves image and mask together, the mask resampled nearest-neighbour
so labels stay labels; photometric jitter touches the image only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_LABEL = 255
"""Mask value for pixels that are not part of the image (letterbox or scale padding): never trained on."""


@dataclass(frozen=True)
class Augmentation:
    min_scale: float = 0.75
    max_scale: float = 1.25
    flip: bool = True
    brightness: float = 0.1
    """Largest shift, as a fraction of the 0..255 range."""
    contrast: float = 0.2
    """Largest relative change of contrast around the image mean."""

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(1.0, 1.0, False, 0.0, 0.0)


def augment_batch(
    images: np.ndarray, masks: np.ndarray, rng: np.random.Generator, config: Augmentation = Augmentation()
) -> tuple[np.ndarray, np.ndarray]:
    """Augment every (image (H,W,3) uint8, mask (H,W) uint8) pair of a batch; shapes are kept."""
    pairs = [augment_pair(image, mask, rng, config) for image, mask in zip(images, masks)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def augment_pair(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: Augmentation = Augmentation()
) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _scale_and_crop(image, mask, rng, config.min_scale, config.max_scale)
    if config.flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return _jitter(image, rng, config.brightness, config.contrast), np.ascontiguousarray(mask)


def _scale_and_crop(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale by a random factor, then cut (or pad) back to the original size at a random offset."""
    height, width = mask.shape
    scale = float(rng.uniform(low, high))
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        return image, mask
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((new_w, new_h), Image.NEAREST))
    canvas_image = np.zeros((max(height, new_h), max(width, new_w), 3), np.uint8)
    canvas_mask = np.full(canvas_image.shape[:2], PAD_LABEL, np.uint8)
    top, left = (
        int(rng.integers(0, canvas_image.shape[0] - new_h + 1)),
        int(rng.integers(0, canvas_image.shape[1] - new_w + 1)),
    )
    canvas_image[top : top + new_h, left : left + new_w] = image
    canvas_mask[top : top + new_h, left : left + new_w] = mask
    top, left = (
        int(rng.integers(0, canvas_image.shape[0] - height + 1)),
        int(rng.integers(0, canvas_image.shape[1] - width + 1)),
    )
    return canvas_image[top : top + height, left : left + width], canvas_mask[top : top + height, left : left + width]


def _jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float) -> np.ndarray:
    if not brightness and not contrast:
        return np.ascontiguousarray(image)
    pixels = image.astype(np.float32)
    mean = pixels.mean()
    factor = 1.0 + float(rng.uniform(-contrast, contrast))
    shift = float(rng.uniform(-brightness, brightness)) * 255.0
    return np.clip((pixels - mean) * factor + mean + shift, 0, 255).astype(np.uint8)
