"""Score a model artifact on a labelled collection: per-class IoU, mIoU, pixel accuracy and Dice.

    python jobs/evaluate.py --model models/v1 --images data/val/img --masks data/val/mask --output eval/v1
    python jobs/evaluate.py --model models/isbi --images isbi/image --masks isbi/label --mask-map 255:1 --output eval/isbi

Images go through the same Ray Data path as jobs/segment.py (decode, letterbox or tiles, actor pool,
mask back to full size), under the same --precision, --mode, --tile-overlap and --tta with the same
defaults; each prediction is compared with its true mask at the image's own size, and one confusion
matrix summed over the collection gives every metric exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from jobs.cli.flags import add_limit_flags, add_storage_flags
from jobs.cli.types import add_wait_flag, non_negative_float, pool_size, positive_float, positive_int  # noqa: E402
from jobs.cluster.nodes import await_nodes, connect_ray, model_info, plan_resources, replica_bundle  # noqa: E402
from jobs.common.errors import run_main  # noqa: E402
from jobs.inference.pipeline import (  # noqa: E402
    ModelInfo,
    Resources,
    add_inference_flags,
    inference_from_flags,
    letterbox_of,
    segmented_dataset,
    with_model_mode,
)
from jobs.storage.files import DEFAULT_MAX_BYTES, filesystem, join, storage_errors
from jobs.storage.settings import StorageOptions, configure_storage
from jobs.training import data as training_data  # noqa: E402
from unet_core import DEFAULT_MAX_PIXELS, unletterbox  # noqa: E402
from unet_core.metrics import confusion_matrix, scores  # noqa: E402

METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.parquet"


@dataclass(frozen=True)
class EvaluateConfig:
    model: str
    images: str
    masks: str
    output: str
    mask_map: str | None = None
    ignore_index: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    batch_size: int = 8
    actors: str = "auto"
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    precision: str = "auto"
    mode: str | None = None
    tile_overlap: float = 0.25
    tta: str = "none"
    rows_per_file: int = 256
    address: str | None = None
    wait_for_nodes: float = 300.0
    s3_endpoint_url: str | None = None
    anonymous: bool = False


def parse_args(argv: list[str] | None = None) -> EvaluateConfig:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="URI", help="model artifact folder")
    parser.add_argument("--images", required=True, metavar="URI", help="folder/prefix of labelled images")
    parser.add_argument("--masks", required=True, metavar="URI", help="their masks, paired by file stem")
    parser.add_argument("--output", required=True, metavar="URI", help=f"folder for {METRICS_FILE} and {PER_IMAGE_FILE}")
    parser.add_argument("--mask-map", metavar="V:C,...", help="map stored mask values to classes, e.g. 255:1")
    parser.add_argument("--ignore-index", type=int, default=None, help="label left out of every metric")
    add_limit_flags(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per model call (default 8)")
    parser.add_argument("--actors", type=pool_size, default="auto", metavar="MIN[:MAX]",
                        help="model replicas, as in segment.py")
    parser.add_argument("--cpus-per-actor", type=positive_float, default=None)
    parser.add_argument("--gpus-per-actor", type=non_negative_float, default=0.0)
    add_inference_flags(parser)
    add_wait_flag(parser)
    parser.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS, else local)")
    add_storage_flags(parser)
    args = vars(parser.parse_args(argv))
    return EvaluateConfig(**args)


def score(batch: dict, model: ModelInfo, lookup: np.ndarray, ignore_index: int | None, max_pixels: int,
          max_bytes: int) -> dict:
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
            truth = training_data.read_mask(batch["mask_uri"][row], lookup, int(batch["mask_size"][row]), max_pixels,
                                            max_bytes)
        except ValueError as exc:
            errors[row] = str(exc)
            continue
        predicted = unletterbox(batch["mask"][row], letterbox_of(batch, row, model.input_size))
        if truth.shape != predicted.shape:
            errors[row] = f"mask is {truth.shape[1]}x{truth.shape[0]}, image is {predicted.shape[1]}x{predicted.shape[0]}"
            continue
        confusion[row] = confusion_matrix(truth, predicted, classes, ignore_index).ravel()
    return {"image_uri": batch["image_uri"], "mask_uri": batch["mask_uri"], "width": batch["width"],
            "height": batch["height"], "error": errors, "confusion": confusion}


def build_dataset(pairs: pa.Table, model: ModelInfo, resources: Resources, config: EvaluateConfig):
    """The segment job's own inference stages, then scoring against the true masks."""
    return segmented_dataset(pairs, model, resources, inference_from_flags(config)).map_batches(
        score, batch_size=resources.batch_size, num_cpus=resources.cpus_per_task, fn_kwargs={
            "model": model, "lookup": training_data.parse_mask_map(config.mask_map),
            "ignore_index": config.ignore_index, "max_pixels": config.max_pixels, "max_bytes": config.max_bytes})


def summarize(confusion: np.ndarray, class_names: tuple[str, ...], ignore_index: int | None) -> dict:
    """Every metric from one confusion matrix; NaN (absent or ignored classes) becomes null."""
    def clean(values):
        return {name: None if np.isnan(v) else float(v) for name, v in zip(class_names, values)}

    scored = scores(confusion, ignore_index)
    return {"mean_iou": scored.mean_iou, "pixel_accuracy": scored.pixel_accuracy,
            "pixel_error": 1.0 - scored.pixel_accuracy, "iou": clean(scored.iou),
            "dice": clean(scored.dice), "pixels": {n: int(v) for n, v in zip(class_names, confusion.sum(1))},
            "confusion": confusion.tolist()}


def per_image_table(rows: dict, classes: int, ignore_index: int | None) -> pa.Table:
    errors = rows["error"]
    accuracy, miou = [], []
    for error, flat in zip(errors, rows["confusion"]):
        matrix = flat.reshape(classes, classes)
        scored = scores(matrix, ignore_index) if not error and matrix.sum() > 0 else None
        accuracy.append(scored.pixel_accuracy if scored else None)
        miou.append(scored.mean_iou if scored else None)
    return pa.table({
        "image_uri": pa.array(rows["image_uri"], pa.string()), "mask_uri": pa.array(rows["mask_uri"], pa.string()),
        "width": pa.array(rows["width"], pa.int32()), "height": pa.array(rows["height"], pa.int32()),
        "status": pa.array(["error" if e else "ok" for e in errors], pa.string()),
        "error": pa.array([e or None for e in errors], pa.string()),
        "pixel_accuracy": pa.array(accuracy, pa.float64()), "mean_iou": pa.array(miou, pa.float64()),
        "confusion": pa.array([list(map(int, c)) for c in rows["confusion"]], pa.list_(pa.int64())),
    })


def evaluate(config: EvaluateConfig) -> dict:
    storage_env = configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    with storage_errors(config.model):
        model = model_info(config.model)
    config = with_model_mode(config, model)
    pairs = training_data.pair_by_stem(config.images, config.masks)
    connect_ray(config.address, storage_env)
    resources = plan_resources(config)
    await_nodes(replica_bundle(resources.cpus_per_actor, resources.gpus_per_actor), resources.min_actors,
                config.wait_for_nodes, "model replicas")
    started = time.time()
    rows = build_dataset(pairs, model, resources, config).to_pandas()
    classes = len(model.class_names)
    order = rows["image_uri"].argsort().to_numpy()
    columns = {name: rows[name].to_numpy()[order] for name in rows.columns}
    columns["confusion"] = np.stack(columns["confusion"]) if len(order) else np.zeros((0, classes * classes), np.int64)
    confusion = columns["confusion"].sum(axis=0).reshape(classes, classes)
    errors = int((columns["error"] != "").sum())
    metrics = {"model": {"uri": model.uri, "name": model.name, "sha256": model.sha256},
               "images": len(order), "errors": errors, "ignore_index": config.ignore_index,
               "mask_map": config.mask_map, "wall_seconds": round(time.time() - started, 3),
               **summarize(confusion, model.class_names, config.ignore_index)}
    write_outputs(config.output, metrics, per_image_table(columns, classes, config.ignore_index))
    return metrics


def write_outputs(output: str, metrics: dict, per_image: pa.Table) -> None:
    fs, root = filesystem(output)
    fs.makedirs(root, exist_ok=True)
    with fs.open(join(root, PER_IMAGE_FILE), "wb") as handle:
        pq.write_table(per_image, handle)
    with fs.open(join(root, METRICS_FILE), "w") as handle:
        json.dump(metrics, handle, indent=2)


def print_table(metrics: dict) -> None:
    print(f"{'class':<20} {'pixels':>12} {'IoU':>8} {'Dice':>8}")
    for name in metrics["iou"]:
        iou, dice = metrics["iou"][name], metrics["dice"][name]
        print(f"{name:<20} {metrics['pixels'][name]:>12,} {'-' if iou is None else f'{iou:.4f}':>8} "
              f"{'-' if dice is None else f'{dice:.4f}':>8}")
    print(f"mIoU {metrics['mean_iou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f} "
          f"(pixel error {metrics['pixel_error']:.4f}) over {metrics['images']} images, {metrics['errors']} errors")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    metrics = evaluate(config)
    print_table(metrics)
    print(f"written: {join(config.output, METRICS_FILE)}, {join(config.output, PER_IMAGE_FILE)}")
    return 0


if __name__ == "__main__":
    run_main(main)
