"""Per-image signals of how far to trust a mask, from the model's own probabilities.

A batch run over millions of images cannot be looked at; these let a user look at the few masks
most likely wrong first. Each is taken over the image's pixels as the model saw them (inside the
letterbox, or the whole image in tile mode), each model pixel counted once:

- confidence_mean: the mean of the winning class's probability.
- confidence_p05: its 5th percentile, to 1/BINS: the confidence of the least sure twentieth.
- uncertain_share: the share of pixels whose winning probability is below UNCERTAIN_BELOW.
- entropy_mean: the mean entropy of the class probabilities over log(classes): 0 when every pixel
  is certain, 1 when every class is equally likely everywhere.
- flip_disagreement: with flip test-time augmentation, the share of pixels where the mirrored
  pass picks another class than the plain one; NaN without it.

This module is the NumPy statement of them (tile mode computes them with it); the letterboxed
path computes the same in the replica's graph (`unet_core.predict`), tested equal.
"""

from __future__ import annotations

import numpy as np

SIGNALS = ("confidence_mean", "confidence_p05", "uncertain_share", "entropy_mean", "flip_disagreement")
UNCERTAIN_BELOW = 0.6
"""A pixel whose winning class has less probability than this is uncertain."""
BINS = 1000
"""The percentile's resolution: confidences are counted in BINS equal bins of [0, 1]."""
PERCENTILE = 0.05


def confidence_bins(confidence: np.ndarray) -> np.ndarray:
    """The bin of each confidence, as the graph computes it."""
    return np.clip(np.floor(confidence.astype(np.float32) * np.float32(BINS)), 0, BINS - 1).astype(np.int64)


def low_percentile(histogram: np.ndarray) -> float:
    """The lower edge of the bin where the counts reach PERCENTILE of their total."""
    reached = np.cumsum(histogram) >= PERCENTILE * histogram.sum()
    return float(np.argmax(reached)) / BINS


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Per pixel, the entropy of the class probabilities (last axis) over log(classes)."""
    p = probabilities.astype(np.float32)
    return -np.sum(p * np.log(np.maximum(p, np.float32(1e-12))), axis=-1) / np.float32(np.log(p.shape[-1]))


def quality_signals(confidence: np.ndarray, entropy: np.ndarray, disagreement: np.ndarray | None = None) -> np.ndarray:
    """The signals (in SIGNALS' order, float64) of one image from its maps of winning probability,
    normalized entropy and (with flip TTA) disagreement, already cut to the image's region."""
    histogram = np.bincount(confidence_bins(confidence).ravel(), minlength=BINS)
    return np.array(
        [
            np.mean(confidence, dtype=np.float64),
            low_percentile(histogram),
            np.mean(confidence < UNCERTAIN_BELOW),
            np.mean(entropy, dtype=np.float64),
            np.nan if disagreement is None else np.mean(disagreement),
        ]
    )
