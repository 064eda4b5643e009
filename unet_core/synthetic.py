"""Synthetic scenes with exact masks: discs, boxes and triangles on textured backgrounds.

They give the demo and the tests labelled data without downloading anything.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SCENE_CLASSES = ("background", "disc", "box", "triangle")
SCENE_COLORS = [(0, 0, 0), (220, 60, 60), (60, 200, 80), (70, 90, 230)]


def make_scene(rng: np.random.Generator, height: int, width: int, shapes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One RGB scene (height, width, 3) uint8 and its class mask (height, width) uint8."""
    image = _texture(rng, height, width)
    mask = Image.new("L", (width, height), 0)
    canvas = Image.fromarray(image)
    draw_image, draw_mask = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    for _ in range(shapes):
        label = int(rng.integers(1, len(SCENE_CLASSES)))
        outline = _shape(rng, label, height, width)
        color = _jitter(rng, SCENE_COLORS[label])
        if label == 1:
            draw_image.ellipse(outline, fill=color)
            draw_mask.ellipse(outline, fill=label)
        elif label == 2:
            draw_image.rectangle(outline, fill=color)
            draw_mask.rectangle(outline, fill=label)
        else:
            draw_image.polygon(outline, fill=color)
            draw_mask.polygon(outline, fill=label)
    return np.asarray(canvas), np.asarray(mask)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey, low-frequency blotches plus pixel noise: enough texture that colour alone must be learnt."""
    coarse = rng.uniform(70, 170, size=(max(2, height // 16), max(2, width // 16), 1))
    blotches = np.asarray(
        Image.fromarray(coarse[..., 0].astype(np.uint8)).resize((width, height), Image.BILINEAR), np.float64
    )
    noise = rng.normal(0, 12, size=(height, width, 3))
    return np.clip(blotches[..., None] + noise, 0, 255).astype(np.uint8)


def _shape(rng: np.random.Generator, label: int, height: int, width: int) -> list:
    size = int(rng.integers(max(4, min(height, width) // 6), max(5, min(height, width) // 2)))
    top, left = int(rng.integers(0, max(1, height - size))), int(rng.integers(0, max(1, width - size)))
    if label == 3:
        return [(left + size // 2, top), (left, top + size), (left + size, top + size)]
    return [left, top, left + size, top + size]


def _jitter(rng: np.random.Generator, color: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in color)
