"""Random training crops of full-resolution images that oversample the rare classes (nnU-Net's idea).

Resizing a large image to the model's input blurs small objects away, and uniform crops of an image
that is mostly background seldom contain them; forcing a share of the crops onto the other classes'
pixels gives the loss something to learn from in every batch. "Background" is each image's most
common class rather than label 0: label sets put it anywhere (ISBI's membranes are 0 and the cells
its background; CamVid's 0 is sky).
"""

from __future__ import annotations

import math

import numpy as np

from unet_core.augment import PAD_LABEL


def sample_patches(
    image: np.ndarray,
    mask: np.ndarray,
    patch_size: int,
    count: int,
    rng: np.random.Generator,
    foreground_share: float = 0.33,
    ignore_index: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` crops (images (N,P,P,C), masks (N,P,P), offsets (N,2) top/left) of `image` and `mask`.

    At least `foreground_share` of them (rounded up, in random positions of the batch) are centred on a
    random pixel of a random class present other than the image's most common one, so a class is picked
    as often as a big one however small it is; the rest are uniform. `ignore_index` is never a class to
    centre on. An image smaller than the patch is padded at the bottom and right (image 0, mask
    PAD_LABEL) so offsets stay in the source's coordinates.
    """
    if count < 1 or patch_size < 1:
        raise ValueError(f"need count >= 1 and patch_size >= 1; got {count} and {patch_size}")
    classes = _minority_classes(mask, ignore_index)
    image, mask = _pad_to(image, mask, patch_size)
    forced = rng.permutation(count) < math.ceil(count * foreground_share) if classes else np.zeros(count, bool)
    offsets = np.array(
        [
            _foreground_offset(mask, classes, patch_size, rng)
            if centred
            else _uniform_offset(mask.shape, patch_size, rng)
            for centred in forced
        ],
        np.int64,
    )
    images = np.stack([image[top : top + patch_size, left : left + patch_size] for top, left in offsets])
    masks = np.stack([mask[top : top + patch_size, left : left + patch_size] for top, left in offsets])
    return images, masks, offsets


def _minority_classes(mask: np.ndarray, ignore_index: int | None) -> list[int]:
    """The classes present in `mask` but its most common one (and the ignore label). A histogram, not
    np.unique: this runs for every crop, and sorting a 960x720 mask costs 15 times as much."""
    counts = np.bincount(mask.ravel())
    if ignore_index is not None and ignore_index < len(counts):
        counts[ignore_index] = 0
    common = counts.argmax()
    return [int(c) for c in np.flatnonzero(counts) if c != common]


def _pad_to(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right with the label the loss skips, so padding never teaches background."""
    extra = [(0, max(0, size - side)) for side in mask.shape]
    if not any(after for _, after in extra):
        return image, mask
    image = np.pad(image, extra + [(0, 0)] * (image.ndim - 2))
    return image, np.pad(mask, extra, constant_values=PAD_LABEL)


def _uniform_offset(shape: tuple[int, ...], size: int, rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(0, shape[0] - size + 1)), int(rng.integers(0, shape[1] - size + 1))


def _foreground_offset(mask: np.ndarray, classes: list, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Centre on a pixel of a random class, clipped inside the image: the pixel stays in the crop."""
    rows, cols = np.nonzero(mask == classes[int(rng.integers(len(classes)))])
    pick = int(rng.integers(len(rows)))
    top = int(np.clip(rows[pick] - size // 2, 0, mask.shape[0] - size))
    return top, int(np.clip(cols[pick] - size // 2, 0, mask.shape[1] - size))
