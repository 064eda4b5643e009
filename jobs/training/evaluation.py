"""Scoring a model on a labelled collection through the segment job's own inference stages:
one confusion matrix summed over the collection gives every metric exactly."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cluster.capacity import Resources, await_nodes, plan_resources, replica_bundle
from jobs.cluster.connect import connect_ray
from jobs.training.config import EvaluateConfig
from jobs.inference.model import ModelInfo, model_info
from jobs.inference.pipeline import listing_dataset, segmented_dataset, with_model_mode
from jobs.inference.stages import letterbox_of
from jobs.storage.files import filesystem, join, storage_errors
from jobs.storage.settings import StorageOptions, configure_storage
from jobs.training import data as training_data
from unet_core.image import unletterbox
from unet_core.metrics import confusion_matrix, scores

METRICS_FILE = "metrics.json"


PER_IMAGE_FILE = "per_image.parquet"


def score(
    batch: dict, model: ModelInfo, lookup: np.ndarray, ignore_index: int | None, max_pixels: int, max_bytes: int
) -> dict:
    """Compare each predicted mask, mapped back to its image's size as segment.py's `finalize` maps it
    (a tiled mask is already full size: its box is the whole image), with the true mask (held to the
    images' limits: a mask refused is its pair's error row)."""
    count, classes = len(batch["image_uri"]), len(model.class_names)
    confusion = np.zeros((count, classes * classes), np.int64)
    errors = batch["error"].copy()
    for row in range(count):
        if errors[row]:
            continue
        try:
            truth = training_data.read_mask(
                batch["mask_uri"][row], lookup, int(batch["mask_size"][row]), max_pixels, max_bytes
            )
        except ValueError as exc:
            errors[row] = str(exc)
            continue
        predicted = unletterbox(batch["mask"][row], letterbox_of(batch, row, model.input_size))
        if truth.shape != predicted.shape:
            errors[row] = (
                f"mask is {truth.shape[1]}x{truth.shape[0]}, image is {predicted.shape[1]}x{predicted.shape[0]}"
            )
            continue
        confusion[row] = confusion_matrix(truth, predicted, classes, ignore_index).ravel()
    return {
        "image_uri": batch["image_uri"],
        "mask_uri": batch["mask_uri"],
        "width": batch["width"],
        "height": batch["height"],
        "error": errors,
        "confusion": confusion,
    }


def evaluation_dataset(pairs: pa.Table, model: ModelInfo, resources: Resources, config: EvaluateConfig):
    """The segment job's own inference stages, then scoring against the true masks."""
    return segmented_dataset(
        listing_dataset(pairs, resources.batch_size), model, resources, config.inference()
    ).map_batches(
        score,
        batch_size=resources.batch_size,
        num_cpus=resources.cpus_per_task,
        fn_kwargs={
            "model": model,
            "lookup": training_data.parse_mask_map(config.mask_map),
            "ignore_index": config.ignore_index,
            "max_pixels": config.max_pixels,
            "max_bytes": config.max_bytes,
        },
    )


@dataclasses.dataclass(frozen=True)
class Summary:
    """Every metric of the collection, from its one confusion matrix, per class by class name: what the
    command prints and what METRICS_FILE holds. None (JSON null) where a metric is NaN, for a class
    absent from truth and prediction or the ignored one, so that the file stays valid JSON."""

    mean_iou: float
    pixel_accuracy: float
    pixel_error: float
    iou: dict[str, float | None]
    dice: dict[str, float | None]
    pixels: dict[str, int]
    """True pixels of each class."""
    confusion: list[list[int]]
    """Rows: true class; columns: predicted."""


def summarize(confusion: np.ndarray, class_names: tuple[str, ...], ignore_index: int | None) -> Summary:
    def clean(values):
        return {name: None if np.isnan(v) else float(v) for name, v in zip(class_names, values)}

    scored = scores(confusion, ignore_index)
    return Summary(
        mean_iou=scored.mean_iou,
        pixel_accuracy=scored.pixel_accuracy,
        pixel_error=1.0 - scored.pixel_accuracy,
        iou=clean(scored.iou),
        dice=clean(scored.dice),
        pixels={n: int(v) for n, v in zip(class_names, confusion.sum(1))},
        confusion=confusion.tolist(),
    )


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """An evaluation's result, returned to the command that prints it and written as METRICS_FILE
    (`as_json`, whose keys and order are the file's format)."""

    model: ModelInfo
    images: int
    errors: int
    """Pairs scored as errors (unreadable, refused or of mismatched sizes): out of every metric."""
    ignore_index: int | None
    mask_map: str | None
    wall_seconds: float
    summary: Summary

    def as_json(self) -> dict:
        return {
            "model": {"uri": self.model.uri, "name": self.model.name, "sha256": self.model.sha256},
            "images": self.images,
            "errors": self.errors,
            "ignore_index": self.ignore_index,
            "mask_map": self.mask_map,
            "wall_seconds": self.wall_seconds,
            **dataclasses.asdict(self.summary),
        }


def per_image_table(rows: dict, classes: int, ignore_index: int | None) -> pa.Table:
    errors = rows["error"]
    accuracy, miou = [], []
    for error, flat in zip(errors, rows["confusion"]):
        matrix = flat.reshape(classes, classes)
        scored = scores(matrix, ignore_index) if not error and matrix.sum() > 0 else None
        accuracy.append(scored.pixel_accuracy if scored else None)
        miou.append(scored.mean_iou if scored else None)
    return pa.table(
        {
            "image_uri": pa.array(rows["image_uri"], pa.string()),
            "mask_uri": pa.array(rows["mask_uri"], pa.string()),
            "width": pa.array(rows["width"], pa.int32()),
            "height": pa.array(rows["height"], pa.int32()),
            "status": pa.array(["error" if e else "ok" for e in errors], pa.string()),
            "error": pa.array([e or None for e in errors], pa.string()),
            "pixel_accuracy": pa.array(accuracy, pa.float64()),
            "mean_iou": pa.array(miou, pa.float64()),
            "confusion": pa.array([list(map(int, c)) for c in rows["confusion"]], pa.list_(pa.int64())),
        }
    )


def evaluate(config: EvaluateConfig) -> Evaluation:
    storage_env = configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    with storage_errors(config.model):
        model = model_info(config.model, config.unsafe_allow_code)
    config = with_model_mode(config, model)
    pairs = training_data.pair_by_stem(config.images, config.masks)
    connect_ray(config.address, storage_env, config.verbosity, config.log_level)
    resources = plan_resources(config)
    await_nodes(
        replica_bundle(resources.cpus_per_actor, resources.gpus_per_actor),
        resources.min_actors,
        config.wait_for_nodes,
        "model replicas",
    )
    started = time.time()
    rows = evaluation_dataset(pairs, model, resources, config).to_pandas()
    classes = len(model.class_names)
    order = rows["image_uri"].argsort().to_numpy()
    columns = {name: rows[name].to_numpy()[order] for name in rows.columns}
    columns["confusion"] = np.stack(columns["confusion"]) if len(order) else np.zeros((0, classes * classes), np.int64)
    confusion = columns["confusion"].sum(axis=0).reshape(classes, classes)
    errors = int((columns["error"] != "").sum())
    evaluation = Evaluation(
        model=model,
        images=len(order),
        errors=errors,
        ignore_index=config.ignore_index,
        mask_map=config.mask_map,
        wall_seconds=round(time.time() - started, 3),
        summary=summarize(confusion, model.class_names, config.ignore_index),
    )
    write_outputs(config.output, evaluation, per_image_table(columns, classes, config.ignore_index))
    return evaluation


def write_outputs(output: str, evaluation: Evaluation, per_image: pa.Table) -> None:
    fs, root = filesystem(output)
    fs.makedirs(root, exist_ok=True)
    with fs.open(join(root, PER_IMAGE_FILE), "wb") as handle:
        pq.write_table(per_image, handle)
    with fs.open(join(root, METRICS_FILE), "w") as handle:
        json.dump(evaluation.as_json(), handle, indent=2)
