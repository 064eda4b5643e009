"""Sliding-window inference for images larger than the model input, at full resolution.

Tiles overlap and their softmax outputs are blended with a Gaussian weight that favours tile
centres (as nnU-Net does), so seams vanish. Rows are finalised band by band, so the class
probabilities are held for one band (tile x width x classes), never for the whole image; the image,
its mask and its confidence are whole, so memory grows with the area too (measured: bench/tile_memory.py).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from unet_core.quality import normalized_entropy


class Tiled(NamedTuple):
    mask: np.ndarray
    """(H, W) uint8 class ids."""
    confidence: np.ndarray
    """(H, W) float32: the blended winning probability."""
    entropy: np.ndarray
    """(H, W) float16: the blended probabilities' normalized entropy (`unet_core.quality`)."""


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` pixels overlapping by `overlap`."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    count = int(np.ceil((length - tile) / stride)) + 1
    return [int(round(i * (length - tile) / (count - 1))) for i in range(count)]


def gaussian_weights(tile: int, sigma_scale: float = 0.125) -> np.ndarray:
    """(tile, tile) weights, 1 at the centre, never 0 (edges of the image have one tile only)."""
    axis = np.arange(tile) - (tile - 1) / 2.0
    one = np.exp(-0.5 * (axis / (tile * sigma_scale)) ** 2)
    weights = np.outer(one, one)
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)


def sliding_window(
    image: np.ndarray,
    probabilities: Callable[[np.ndarray], np.ndarray],
    tile: int,
    num_classes: int,
    overlap: float = 0.25,
) -> Tiled:
    """Segment an (H, W, 3) uint8 image of any size.

    `probabilities` maps (N, tile, tile, 3) uint8 to (N, tile, tile, C) softmax outputs.
    """
    padded, height, width = _pad_to_tile(image, tile)
    rows, cols = tile_starts(padded.shape[0], tile, overlap), tile_starts(padded.shape[1], tile, overlap)
    weights = gaussian_weights(tile)[..., None]
    mask = np.zeros(padded.shape[:2], np.uint8)
    confidence = np.zeros(padded.shape[:2], np.float32)
    entropy = np.zeros(padded.shape[:2], np.float16)
    band_top = 0
    band = np.zeros((tile, padded.shape[1], num_classes), np.float32)
    band_weight = np.zeros((tile, padded.shape[1], 1), np.float32)
    for index, top in enumerate(rows):
        band, band_weight, band_top = _shift_band(band, band_weight, band_top, top)
        tiles = np.stack([padded[top : top + tile, left : left + tile] for left in cols])
        for left, probs in zip(cols, probabilities(tiles)):
            band[:, left : left + tile] += probs * weights
            band_weight[:, left : left + tile] += weights
        done = (rows[index + 1] if index + 1 < len(rows) else padded.shape[0]) - band_top
        blended = band[:done] / band_weight[:done]
        mask[band_top : band_top + done] = blended.argmax(-1)
        confidence[band_top : band_top + done] = blended.max(-1)
        entropy[band_top : band_top + done] = normalized_entropy(blended)
    return Tiled(mask[:height, :width], confidence[:height, :width], entropy[:height, :width])


def _shift_band(band: np.ndarray, weight: np.ndarray, band_top: int, top: int):
    """Slide the accumulation band down to start at `top`, keeping the rows still being blended."""
    shift = top - band_top
    if shift == 0:
        return band, weight, band_top
    band = np.concatenate([band[shift:], np.zeros_like(band[:shift])])
    weight = np.concatenate([weight[shift:], np.zeros_like(weight[:shift])])
    return band, weight, top


def _pad_to_tile(image: np.ndarray, tile: int) -> tuple[np.ndarray, int, int]:
    height, width = image.shape[:2]
    padded = np.zeros((max(height, tile), max(width, tile), 3), np.uint8)
    padded[:height, :width] = image
    return padded, height, width
