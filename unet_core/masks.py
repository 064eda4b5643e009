"""Masks as palette PNGs and per-class statistics of one mask."""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from unet_core.image import Letterbox, refuse_oversized, unletterbox

VOC_CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def default_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """Pascal VOC's colour map: the palette every VOC tool already knows."""
    colors = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors if num_classes <= 256 else colors + _hue_colors(num_classes - 256)


def _hue_colors(count: int) -> list[tuple[int, int, int]]:
    return [tuple(int(255 * v) for v in colorsys.hsv_to_rgb(i / count, 0.8, 0.9)) for i in range(count)]


Z_RLE = 3
"""zlib's run-length strategy: a class mask is runs of one value, which it codes 2-4x faster than
the default strategy at level 6, in fewer bytes for clean masks and at most 2x more for speckled
ones (docs/performance.md)."""


def encode_mask_png(mask: np.ndarray, colors: list[tuple[int, int, int]]) -> bytes:
    """Encode a class-index mask losslessly; the palette makes it viewable as a colour image."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D; got shape {mask.shape}")
    if len(colors) > 256:
        raise ValueError("palette PNG masks hold at most 256 classes")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette([channel for color in colors for channel in color])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, compress_type=Z_RLE)
    return buffer.getvalue()


def decode_mask_png(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Read back the class indices of a palette PNG (the palette itself is ignored). Given
    `max_pixels`, a mask declaring more is refused before it is decoded, as an image would be: a
    true mask from a user's collection is as untrusted as its image."""
    with Image.open(io.BytesIO(data)) as image:
        if max_pixels is not None:
            refuse_oversized(*image.size, max_pixels, what="mask")
        if image.mode not in ("P", "L"):
            raise ValueError(f"expected a palette or grey mask PNG; got mode {image.mode}")
        return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class ClassStats:
    """Per-class figures of one mask, each array indexed by class id."""

    pixels: np.ndarray
    fraction: np.ndarray
    mean_confidence: np.ndarray
    """NaN where a class has no pixels."""


ROWS_PER_BLOCK = 32
"""Rows counted at a time: temporaries this small are reused by the allocator, where whole-map ones
are handed back to the system and faulted in again on every image (4x the counting itself at 512x384)."""


def class_statistics(
    mask: np.ndarray, confidence: np.ndarray, num_classes: int, repeats: tuple[np.ndarray, np.ndarray] | None = None
) -> ClassStats:
    """Pixel count, share of the image and mean softmax confidence of each class in one mask.

    `repeats` (per row, per column: `Letterbox.repeats`) counts pixel (i, j) rows[i] * cols[j] times:
    a model-space mask gives the figures of the full-size mask without building it. They are exact,
    not close: counts are integers, and the confidence sums are of float16 values (multiples of
    2**-24) times integers, below 2**29 for any image under 500 megapixels, which float64 adds
    without rounding in any order.
    """
    height, width = mask.shape
    rows, cols = repeats if repeats is not None else (np.ones(height, np.int64), np.ones(width, np.int64))
    cols = cols.astype(np.float64)
    pixels, confidence_sum = np.zeros(num_classes), np.zeros(num_classes)
    for top in range(0, height, ROWS_PER_BLOCK):
        block = slice(top, top + ROWS_PER_BLOCK)
        labels = mask[block].ravel()
        counts = rows[block, None] * cols[None, :]
        pixels += np.bincount(labels, weights=counts.ravel(), minlength=num_classes)[:num_classes]
        confidence_sum += np.bincount(labels, weights=(confidence[block] * counts).ravel(), minlength=num_classes)[
            :num_classes
        ]
    pixels = pixels.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(pixels > 0, confidence_sum / np.maximum(pixels, 1), np.nan)
    return ClassStats(pixels, pixels / max(int(rows.sum()) * int(cols.sum()), 1), mean_confidence)


def letterboxed_statistics(mask: np.ndarray, confidence: np.ndarray, box: Letterbox, num_classes: int) -> ClassStats:
    """The statistics of a model-space mask and confidence brought back to their image's size, by
    the cheaper of two exact ways: weighted in model space when the image has more pixels than its
    box (a photo: 12 megapixels against 0.2), on the maps brought to full size when it has fewer."""
    if box.height * box.width > box.inner_height * box.inner_width:
        return class_statistics(box.inner(mask), box.inner(confidence), num_classes, box.repeats())
    return class_statistics(unletterbox(mask, box), unletterbox(confidence, box), num_classes)
