"""The per-batch stages of a segmentation run: read and decode, the model replica, masks back to
full size with statistics, Parquet parts. Every input row comes out as exactly one output row."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from functools import partial
from typing import Callable, TypeVar

import numpy as np
import pyarrow as pa

from jobs.cluster.capacity import STAGES
from jobs.inference.config import Inference
from jobs.inference.model import ModelInfo
from jobs.output.parts import write_part
from jobs.output.columns import IMAGE_COLUMNS, TIMESTAMP
from jobs.output.tables import CLASS_STATS_FILE_SCHEMA, IMAGES_FILE_SCHEMA, nested_classes
from jobs.storage.files import InputRefused, is_transient, read_input
from unet_core.image import DecodeError, Letterbox, decode_image, decode_letterboxed, unletterbox
from unet_core.masks import encode_mask_png, letterboxed_statistics
from unet_core.quality import SIGNALS


T = TypeVar("T")


def image_id(uri: str) -> str:
    """A stable id from the URI: safe as an object key whatever the file is called."""
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:20]


TRANSIENT = "transient"
"""The store failed after its own retries (throttling, a dropped connection): the next
`--incremental` run tries the image again."""
INVALID = "invalid"
"""The file itself is refused or undecodable: trying again gives the same answer until it changes."""


class ImageError(Exception):
    """Why one image has no result, and whether a later run may get one."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


def read_image(uri: str, size: int, max_bytes: int) -> bytes:
    """Read one image's bytes; every failure, whatever raised it, is an ImageError."""
    try:
        return read_input(uri, size, max_bytes)
    except InputRefused as exc:
        raise ImageError(str(exc), INVALID) from None
    except Exception as exc:  # missing or denied, or the store gave up after its own retries
        raise ImageError(
            f"cannot read file ({exc.__class__.__name__}: {exc})", TRANSIENT if is_transient(exc) else INVALID
        ) from None


def decode_bytes(data: bytes, decode: Callable[[bytes], T]) -> T:
    """Decode one image's bytes; every failure, whatever raised it, is an ImageError."""
    try:
        return decode(data)
    except DecodeError as exc:
        raise ImageError(str(exc), INVALID) from None
    except Exception as exc:  # whatever else one file provokes stays that file's error
        raise ImageError(f"unexpected {exc.__class__.__name__} while decoding: {exc}", INVALID) from None


def prepare(batch: dict, input_size: int, max_pixels: int, max_bytes: int, tile: bool = False) -> dict:
    """Read and decode each image, letterboxed to the model input (or whole, for tiling);
    failures become error rows."""
    count = len(batch["image_uri"])
    images = []
    boxes = np.zeros((count, 4), np.int32)
    width, height = np.zeros(count, np.int32), np.zeros(count, np.int32)
    errors, kinds = np.full(count, "", dtype=object), np.full(count, "", dtype=object)
    read_s, decode_s = np.zeros(count), np.zeros(count)
    decode = (
        partial(whole_image, max_pixels=max_pixels)
        if tile
        else partial(decode_letterboxed, size=input_size, max_pixels=max_pixels)
    )
    for row, (uri, size) in enumerate(zip(batch["image_uri"], batch["source_size"])):
        started = time.perf_counter()
        try:
            data = read_image(uri, int(size), max_bytes)
            read = time.perf_counter()
            image, box = decode_bytes(data, decode)
        except ImageError as exc:
            errors[row], kinds[row] = str(exc), exc.kind
            images.append(np.zeros((1, 1, 3) if tile else (input_size, input_size, 3), np.uint8))
            read_s[row] = time.perf_counter() - started  # a failed image's time counts as reading, whatever failed
            continue
        read_s[row], decode_s[row] = read - started, time.perf_counter() - read
        images.append(image)
        height[row], width[row] = box.height, box.width
        boxes[row] = (box.top, box.left, box.inner_height, box.inner_width)
    return {
        **batch,
        "image_id": np.array([image_id(u) for u in batch["image_uri"]], dtype=object),
        "width": width,
        "height": height,
        "error": errors,
        "error_kind": kinds,
        "box": boxes,
        "pixels": ragged(images) if tile else np.stack(images),
        "seconds_read": read_s,
        "seconds_decode": decode_s,
    }


def whole_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, Letterbox]:
    """The image at full resolution, for tiling: its box is the whole image."""
    image = decode_image(data, max_pixels=max_pixels)
    height, width = image.shape[:2]
    return image, Letterbox(height, width, max(height, width), 0, 0, height, width)


def ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """An object array of differently shaped arrays (Ray Data stores it as a variable-shape tensor)."""
    out = np.empty(len(arrays), dtype=object)
    for index, array in enumerate(arrays):
        out[index] = array
    return out


class Segmenter:
    """Holds one model replica for the life of its actor and segments batches of prepared images."""

    def __init__(self, model_uri: str, inference: Inference, batch_size: int, threads: int):
        from unet_core import load_artifact
        from unet_core.predict import Predictor, configure_tensorflow

        configure_tensorflow(threads)
        artifact = load_artifact(model_uri, allow_unsafe=inference.allow_unsafe)
        self.predictor = Predictor(artifact, batch_size, inference.precision, inference.tta)
        self.tile_overlap = inference.tile_overlap
        self.placement = json.dumps(replica_placement(), sort_keys=True)
        print(f"model replica placed: {self.placement}")

    def __call__(self, batch: dict) -> dict:
        started = time.perf_counter()
        ok = batch["error"] == ""
        out = {key: value for key, value in batch.items() if key != "pixels"}
        signals = np.full((len(ok), len(SIGNALS)), np.nan)
        if self.tile_overlap is None:
            masks, confidence = self._letterboxed(batch["pixels"], batch["box"], ok, signals)
        else:
            masks, confidence = self._tiled(batch["pixels"], ok, signals)
        return {
            **out,
            "mask": masks,
            "confidence": confidence,
            **signal_columns(signals),
            "replica": np.full(len(ok), self.placement, object),
            "seconds_model": np.full(len(ok), (time.perf_counter() - started) / len(ok)),
        }

    def _letterboxed(
        self, pixels: np.ndarray, boxes: np.ndarray, ok: np.ndarray, signals: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        masks = np.zeros(pixels.shape[:3], np.uint8)
        confidence = np.zeros(pixels.shape[:3], np.float16)
        if ok.any():
            predicted = self.predictor.predict(pixels[ok], boxes[ok])
            masks[ok], confidence[ok], signals[ok] = (
                predicted.masks,
                predicted.confidence.astype(np.float16),
                predicted.signals,
            )
        return masks, confidence

    def _tiled(self, pixels: np.ndarray, ok: np.ndarray, signals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from unet_core.quality import quality_signals
        from unet_core.tiling import sliding_window

        masks, confidence = [], []
        for row, (image, good) in enumerate(zip(pixels, ok)):
            if not good:
                masks.append(np.zeros((1, 1), np.uint8))
                confidence.append(np.zeros((1, 1), np.float16))
                continue
            tiled = sliding_window(
                image,
                self.predictor.probabilities,
                self.predictor.input_size,
                self.predictor.num_classes,
                self.tile_overlap,
            )
            masks.append(tiled.mask)
            confidence.append(tiled.confidence.astype(np.float16))
            signals[row] = quality_signals(tiled.confidence, tiled.entropy)
        return ragged(masks), ragged(confidence)


def signal_columns(signals: np.ndarray) -> dict[str, np.ndarray]:
    """The batch columns of the quality signals (one row per image, NaN where an image has none)."""
    return {name: signals[:, index] for index, name in enumerate(SIGNALS)}


def replica_placement() -> dict:
    """Where this replica runs: its node, the GPUs Ray assigned to it, and the device TensorFlow
    actually uses (CPU when the assigned GPU is not physically there). Recorded in the manifest."""
    import ray
    import tensorflow as tf

    context = ray.get_runtime_context()
    return {
        "node_id": context.get_node_id(),
        "pid": os.getpid(),
        "gpu_ids": [str(gpu) for gpu in context.get_accelerator_ids().get("GPU", [])],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "tensorflow_device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
    }


def letterbox_of(batch: dict, row: int, input_size: int) -> Letterbox:
    """Where `prepare` placed this row's image inside the model input."""
    top, left, inner_h, inner_w = (int(v) for v in batch["box"][row])
    return Letterbox(int(batch["height"][row]), int(batch["width"][row]), input_size, top, left, inner_h, inner_w)


def finalize(batch: dict, model: ModelInfo, native_masks: bool = True) -> dict:
    """Count each image's classes and encode its mask, at its image's own size (`native_masks`) or
    at the model's. The statistics are taken in model space, each model pixel weighted by the image
    pixels it stands for: those of the full-size mask, without building it (`class_statistics`)."""
    count, classes = len(batch["image_uri"]), len(model.class_names)
    stats = {
        name: np.zeros((count, classes), dtype)
        for name, dtype in (("pixels", np.int64), ("fraction", np.float64), ("mean_confidence", np.float64))
    }
    mask_png = np.full(count, None, dtype=object)
    seconds = np.zeros(count)
    for row in range(count):
        if batch["error"][row]:
            continue
        started = time.perf_counter()
        box = letterbox_of(batch, row, model.input_size)
        mask = batch["mask"][row]
        result = letterboxed_statistics(mask, batch["confidence"][row], box, classes)
        mask_png[row] = encode_mask_png(stored_mask(mask, box, native_masks), list(model.colors))
        stats["pixels"][row], stats["fraction"][row], stats["mean_confidence"][row] = (
            result.pixels,
            result.fraction,
            result.mean_confidence,
        )
        seconds[row] = time.perf_counter() - started
    out = {key: value for key, value in batch.items() if key not in ("mask", "confidence", "box")}
    return {**out, "mask_png": mask_png, **{f"stats_{k}": v for k, v in stats.items()}, "seconds_postprocess": seconds}


def stored_mask(mask: np.ndarray, box: Letterbox, native: bool) -> np.ndarray:
    """The mask as stored: at its image's size, or at the model's where that is the smaller."""
    small = not native and box.inner_height * box.inner_width < box.height * box.width
    return box.inner(mask) if small else unletterbox(mask, box)


def write_parts(batch: dict, output: str, run_id: str, model: ModelInfo) -> dict:
    """Write this batch as one part of the run (`jobs.output.parts`); report it for the commit.

    The files stay invisible until the driver's Delta commit lists them. Names are fresh UUIDs,
    never derived from input names."""
    started = time.perf_counter()
    class_stats = _class_stats_table(batch, model)
    ok = batch["error"] == ""
    facts = {
        "ok": int(ok.sum()),
        "class_pixels": batch["stats_pixels"][ok].sum(axis=0).tolist(),
        "replicas": json.dumps(sorted(set(batch["replica"]))),
        **{f"seconds_{stage}": float(np.sum(batch[f"seconds_{stage}"])) for stage in MEASURED_AHEAD},
    }
    images = _images_table(batch, model, class_stats)
    row = write_part(output, run_id, images, class_stats, {**facts, "seconds_write": time.perf_counter() - started})
    return {
        key: np.array(
            [value], dtype=object if isinstance(value, str) else np.float64 if isinstance(value, float) else np.int64
        )
        for key, value in row.items()
    }


MEASURED_AHEAD = tuple(stage for stage in STAGES if stage != "write")
"""The stages whose seconds reach `write_parts` as columns of the batch (`seconds_<stage>`)."""


def _images_table(batch: dict, model: ModelInfo, class_stats: pa.Table) -> pa.Table:
    """The part's `images` rows: every column the batch carries as it is (NaN read as null), and
    those the declaration marks `made` made here."""
    made = _made_image_columns(batch, model, class_stats)
    return pa.table(
        {
            column.name: made[column.name]
            if column.made
            else pa.array(batch[column.name], column.type, from_pandas=True)
            for column in IMAGE_COLUMNS
        },
        schema=IMAGES_FILE_SCHEMA,
    )


def _made_image_columns(batch: dict, model: ModelInfo, class_stats: pa.Table) -> dict[str, pa.Array]:
    count = len(batch["image_uri"])
    errors = batch["error"]
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "status": pa.array(np.where(errors == "", "ok", "error"), pa.string()),
        "error": pa.array([e or None for e in errors], pa.string()),
        "error_kind": pa.array([k or None for k in batch["error_kind"]], pa.string()),
        # a batch of only failures reaches here with the all-null column read back as floats
        "mask_png": pa.array([v if isinstance(v, bytes) else None for v in batch["mask_png"]], pa.binary()),
        "classes": nested_classes(class_stats, errors == "", len(model.class_names)),
        "model_name": pa.array([model.name] * count, pa.string()),
        "model_sha256": pa.array([model.sha256] * count, pa.string()),
        "processed_at": pa.array([now] * count, TIMESTAMP),
    }


def _class_stats_table(batch: dict, model: ModelInfo) -> pa.Table:
    """The part's `class_stats` rows: one per ok image and class, every column made here (a column
    declared and not made is a KeyError here, not a wrong file)."""
    ok = np.flatnonzero(batch["error"] == "")
    classes = len(model.class_names)
    confidence = batch["stats_mean_confidence"][ok].ravel()
    return pa.table(
        {
            "image_id": pa.array(np.repeat(batch["image_id"][ok], classes), pa.string()),
            "image_uri": pa.array(np.repeat(batch["image_uri"][ok], classes), pa.string()),
            "class_id": pa.array(np.tile(np.arange(classes, dtype=np.int16), len(ok)), pa.int16()),
            "class_name": pa.array(np.tile(np.array(model.class_names, dtype=object), len(ok)), pa.string()),
            "pixels": pa.array(batch["stats_pixels"][ok].ravel(), pa.int64()),
            "fraction": pa.array(batch["stats_fraction"][ok].ravel(), pa.float64()),
            "mean_confidence": pa.array(confidence, pa.float64(), mask=np.isnan(confidence)),
        },
        schema=CLASS_STATS_FILE_SCHEMA,
    )
