"""Labelled collections for training and evaluation: pairing images with masks, and loading pairs.

Images and masks pair by file stem (`a/0001.jpg` with `b/0001.png`), or come from a Pascal VOC
layout. Masks store class indices (grey or palette PNG); `--mask-map` rewrites stored values
(ISBI's 0/255) into class indices.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
from functools import partial

import numpy as np
import pyarrow as pa
from PIL import Image

from jobs.common.errors import UserError
from jobs.inference.stages import ragged
from jobs.storage.files import DEFAULT_MAX_BYTES, InputRefused, filesystem, join, read_bytes, read_input
from jobs.storage.listing import canonical_uri, list_inputs
from unet_core import DEFAULT_MAX_PIXELS, DecodeError, Letterbox, decode_image, decode_mask_png
from unet_core.augment import PAD_LABEL, augment_batch
from unet_core.image import decode_letterboxed, refuse_oversized
from unet_core.patches import sample_patches

PAIRS_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("stem", pa.string()),
        ("image_uri", pa.string()),
        ("mask_uri", pa.string()),
        ("source_size", pa.int64()),
        ("source_version", pa.string()),
        ("mask_size", pa.int64()),
    ]
)
"""`source_size` and `mask_size`: the files' listed sizes, -1 where unknown (a VOC list)."""
HEADER_BLOCK = 1 << 16
"""Bytes fetched per read while a header is parsed (s3fs' default block is megabytes)."""
FOREGROUND_SHARE = 0.33
"""Share of each batch's patches centred on a pixel of a class other than its image's most common one
(nnU-Net's oversampling)."""


def stem(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri.replace(os.sep, "/")))[0]


def pair_by_stem(images: str, masks: str) -> pa.Table:
    """Every image with the mask of the same stem; a partner missing on either side is an error."""
    image_listing, mask_listing = list_inputs([images]), list_inputs([masks])
    for spec, listing, setting in ((images, image_listing, "images"), (masks, mask_listing, "masks")):
        if listing.num_rows == 1 and listing.column("image_uri")[0].as_py() == canonical_uri(spec):
            raise UserError(
                f"{spec}: names one file; give the folder or prefix that holds the {setting} (or a list file of them)",
                setting,
            )
    by_stem = {}
    for side, listing, spec in (("image", image_listing, images), ("mask", mask_listing, masks)):
        found: dict[str, dict] = {}
        for row in listing.to_pylist():
            key = stem(row["image_uri"])
            if key in found:
                raise UserError(
                    f"{spec}: two {side}s share the stem {key!r} ({found[key]['image_uri']} and {row['image_uri']})"
                )
            found[key] = row
        by_stem[side] = found
    if not by_stem["image"]:
        raise UserError(f"{images}: no images found")
    _check_partners(by_stem["image"], by_stem["mask"], images, masks)
    return _pairs_table([(key, row, by_stem["mask"][key]) for key, row in sorted(by_stem["image"].items())])


def _check_partners(images: dict, masks: dict, image_spec: str, mask_spec: str) -> None:
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    problems = []
    if lonely_images:
        problems.append(
            f"{len(lonely_images)} images have no mask in {mask_spec} (e.g. {', '.join(lonely_images[:3])})"
        )
    if lonely_masks:
        problems.append(f"{len(lonely_masks)} masks have no image in {image_spec} (e.g. {', '.join(lonely_masks[:3])})")
    if problems:
        raise UserError("images and masks pair by file stem: " + "; ".join(problems))


def voc_pairs(root: str, split: str) -> pa.Table:
    """Pairs of a Pascal VOC tree: ImageSets/Segmentation/<split>.txt, JPEGImages/, SegmentationClass/."""
    list_file = join(root, "ImageSets", "Segmentation", f"{split}.txt")
    try:
        names = [line.strip() for line in read_bytes(list_file).decode().splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"{root}: no {list_file} (expected a Pascal VOC layout)", "voc") from None
    rows = [
        (
            name,
            {"image_uri": join(root, "JPEGImages", f"{name}.jpg"), "source_size": -1, "source_version": ""},
            {"image_uri": join(root, "SegmentationClass", f"{name}.png"), "source_size": -1},
        )
        for name in names
    ]
    return _pairs_table(rows)


def _pairs_table(rows: list[tuple[str, dict, dict]]) -> pa.Table:
    """Pairs from (stem, image listing row, mask listing row)."""
    return pa.table(
        {
            "index": pa.array(range(len(rows)), pa.int64()),
            "stem": [key for key, _, _ in rows],
            "image_uri": [row["image_uri"] for _, row, _ in rows],
            "mask_uri": [mask["image_uri"] for _, _, mask in rows],
            "source_size": pa.array([row["source_size"] for _, row, _ in rows], pa.int64()),
            "source_version": [row["source_version"] for _, row, _ in rows],
            "mask_size": pa.array([mask["source_size"] for _, _, mask in rows], pa.int64()),
        },
        schema=PAIRS_SCHEMA,
    )


def split_validation(pairs: pa.Table, fraction: float, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Hold out a random `fraction` of pairs (at least one), the same ones for the same seed."""
    count = len(pairs)
    held = max(1, round(count * fraction))
    if held >= count:
        raise UserError(f"{fraction}: would leave no training data out of {count} pairs", "val_fraction")
    order = np.random.default_rng(seed).permutation(count)
    return reindex(pairs.take(np.sort(order[held:]))), reindex(pairs.take(np.sort(order[:held])))


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of the whole training set, new each epoch: pairs are listed by stem, so on
    video-ordered data (CamVid) a fixed order fills each batch with neighbouring frames. It depends on
    (seed, epoch) alone, so a resumed or repeated run sees the same order at the same epoch."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def worker_share(order: np.ndarray, rank: int, world: int, pairs_per_worker: int) -> np.ndarray:
    """Every world-th pair of the order from `rank` on, so that the workers' s-th batches together
    are the order's s-th global batch; the pairs past the last full global batch wait for an epoch
    that orders them earlier."""
    return order[rank::world][:pairs_per_worker]


def reindex(pairs: pa.Table) -> pa.Table:
    return pairs.set_column(0, "index", pa.array(range(len(pairs)), pa.int64()))


def fingerprint(pairs: pa.Table) -> str:
    """sha256 over the pairs' URIs, sizes and versions: the same data gives the same fingerprint."""
    digest = hashlib.sha256()
    for row in pairs.select(["image_uri", "mask_uri", "source_size", "source_version"]).to_pylist():
        digest.update(repr(sorted(row.items())).encode())
    return digest.hexdigest()


def parse_mask_map(text: str | None) -> np.ndarray:
    """'255:1,128:2' -> a 256-entry lookup table from stored mask value to class index."""
    table = np.arange(256, dtype=np.uint8)
    for item in filter(None, (text or "").replace(" ", "").split(",")):
        try:
            stored, _, label = item.partition(":")
            stored, label = int(stored), int(label)
        except ValueError:
            raise UserError(f"{text!r}: expected STORED:CLASS pairs such as 255:1,0:0", "mask_map") from None
        if not (0 <= stored <= 255 and 0 <= label <= 255):
            raise UserError(f"{text!r}: values must be 0..255", "mask_map")
        table[stored] = label
    return table


def read_mask(
    uri: str,
    lookup: np.ndarray,
    size: int = -1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """A stored mask as class indices (H, W) uint8, held to the limits images are held to: refused
    unread above `max_bytes` (from its listed `size`; -1, unknown, reads up to the limit) and
    undecoded above `max_pixels`."""
    try:
        return lookup[decode_mask_png(read_input(uri, size, max_bytes), max_pixels)]
    except (OSError, ValueError, InputRefused) as exc:
        raise ValueError(f"{uri}: cannot read mask ({exc})") from exc


def read_pair(batch: dict, row: int, lookup: np.ndarray, max_pixels: int, max_bytes: int):
    """One pair's image and mask at full resolution; a file that cannot be used is a UserError naming
    it: training cannot go on without it, and a traceback would not say more."""
    image = _read_image(batch, row, partial(decode_image, max_pixels=max_pixels), max_bytes)
    return image, _pair_mask(batch, row, lookup, image.shape[:2], max_pixels, max_bytes)


def read_letterboxed_pair(
    batch: dict, row: int, input_size: int, lookup: np.ndarray, max_pixels: int, max_bytes: int
) -> tuple[np.ndarray, Letterbox, np.ndarray]:
    """One pair's image letterboxed into the model input, decoded as segment.py decodes it (a JPEG at
    the DCT scale its letterbox needs), its box, and its mask at full resolution."""
    boxed, box = _read_image(batch, row, partial(decode_letterboxed, size=input_size, max_pixels=max_pixels), max_bytes)
    return boxed, box, _pair_mask(batch, row, lookup, (box.height, box.width), max_pixels, max_bytes)


def _read_image(batch: dict, row: int, decode, max_bytes: int):
    image_uri = batch["image_uri"][row]
    try:
        return decode(read_input(image_uri, int(batch["source_size"][row]), max_bytes))
    except (DecodeError, InputRefused, OSError) as exc:
        raise UserError(f"{image_uri}: cannot read image ({exc})") from None


def _pair_mask(
    batch: dict, row: int, lookup: np.ndarray, shape: tuple[int, int], max_pixels: int, max_bytes: int
) -> np.ndarray:
    """The pair's mask, which must be its image's size."""
    image_uri, mask_uri = batch["image_uri"][row], batch["mask_uri"][row]
    try:
        mask = read_mask(mask_uri, lookup, int(batch["mask_size"][row]), max_pixels, max_bytes)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if mask.shape != shape:
        raise UserError(
            f"{mask_uri}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {image_uri} is {shape[1]}x{shape[0]}"
        )
    return mask


def header_facts(batch: dict, max_pixels: int, max_bytes: int) -> dict:
    """Per pair, from the listed sizes and the headers alone: why its image or mask would be refused
    ('' if not), and its image's pixel count (0 where the header cannot be read). Read before
    training, so that a file over a limit ends the job in one line naming it instead of a worker
    mid-epoch, and so that an epoch's crops can follow each image's area."""
    rows = range(len(batch["image_uri"]))
    images = [
        _image_facts(batch["image_uri"][row], int(batch["source_size"][row]), "image", max_pixels, max_bytes)
        for row in rows
    ]
    reasons = [
        reason or _image_facts(batch["mask_uri"][row], int(batch["mask_size"][row]), "mask", max_pixels, max_bytes)[0]
        for row, (reason, _) in zip(rows, images)
    ]
    return {
        "position": batch["position"],
        "refusal": np.array(reasons, dtype=object),
        "pixels": np.array([pixels for _, pixels in images], np.int64),
    }


def crops_per_image(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """Crops of each image per epoch so that an epoch covers about every pixel once: its area in
    patches, rounded, at least 1 (an unreadable header, 0 pixels, gets 1)."""
    return np.maximum(1, np.rint(np.asarray(pixels, np.float64) / patch_size**2)).astype(np.int64)


def epoch_samples(crops: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The epoch's samples as pair indices, each pair as many times as its crops, in `epoch_order`."""
    samples = np.repeat(np.arange(len(crops)), crops)
    return samples[epoch_order(len(samples), seed, epoch)]


def _image_facts(uri: str, size: int, what: str, max_pixels: int, max_bytes: int) -> tuple[str, int]:
    if size > max_bytes:
        return f"{uri}: cannot read {what} (file has {size:,} bytes, above the max_bytes limit of {max_bytes:,})", 0
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb", block_size=HEADER_BLOCK) as handle, Image.open(handle) as image:
            width, height = image.size
            refuse_oversized(width, height, max_pixels, what)
    except DecodeError as exc:
        return f"{uri}: cannot read {what} ({exc})", 0
    except Exception:  # unreadable, or no image at all: loading the pair says why
        return "", 0
    return "", width * height


def load_pairs(
    batch: dict,
    input_size: int,
    lookup: np.ndarray,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict:
    """Decode each pair into the model input as segment.py decodes it; padding is labelled PAD_LABEL (ignored)."""
    count = len(batch["image_uri"])
    images = np.zeros((count, input_size, input_size, 3), np.uint8)
    masks = np.zeros((count, input_size, input_size), np.uint8)
    for row in range(count):
        images[row], box, mask = read_letterboxed_pair(batch, row, input_size, lookup, max_pixels, max_bytes)
        masks[row] = PAD_LABEL
        box.inner(masks[row])[...] = np.asarray(
            Image.fromarray(mask).resize((box.inner_width, box.inner_height), Image.NEAREST)
        )
    return {"index": batch["index"], "image": images, "mask": masks}


def load_full_pairs(
    batch: dict, lookup: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict:
    """Decode each pair at full resolution (object arrays: sizes differ), for validation in tiles."""
    pairs = [read_pair(batch, row, lookup, max_pixels, max_bytes) for row in range(len(batch["image_uri"]))]
    return {"image": ragged([image for image, _ in pairs]), "mask": ragged([mask for _, mask in pairs])}


def training_batch(
    batch: dict,
    input_size: int,
    lookup: np.ndarray,
    patch_size: int | None,
    augment: bool,
    seed: list[int],
    ignore_index: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict:
    """One worker batch ready for the step: decoded, letterboxed (or cut to patches of the full-resolution
    pairs), augmented. Built in the worker's reader actor ahead of the step, so the worker's own CPUs only train;
    `seed` (run seed, epoch, rank, batch) makes it the same batch on a rerun."""
    rng = np.random.default_rng(seed)
    if patch_size:
        images, masks = patch_batch(batch, patch_size, lookup, rng, ignore_index, max_pixels, max_bytes)
    else:
        loaded = load_pairs(batch, input_size, lookup, max_pixels, max_bytes)
        images, masks = loaded["image"], loaded["mask"]
    if augment:
        images, masks = augment_batch(images, masks, rng)
    return {"image": images, "mask": masks}


def patch_batch(
    batch: dict,
    patch_size: int,
    lookup: np.ndarray,
    rng: np.random.Generator,
    ignore_index: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """One random crop per pair at full resolution; FOREGROUND_SHARE of the batch (rounded up) centred
    on a pixel of a class other than the image's most common one, so every batch shows the rare classes."""
    count = len(batch["image_uri"])
    centred = rng.permutation(count) < math.ceil(count * FOREGROUND_SHARE)
    crops = [
        sample_patches(
            *read_pair(batch, row, lookup, max_pixels, max_bytes),
            patch_size,
            1,
            rng,
            foreground_share=float(centred[row]),
            ignore_index=ignore_index,
        )
        for row in range(count)
    ]
    return np.concatenate([images for images, _, _ in crops]), np.concatenate([masks for _, masks, _ in crops])
