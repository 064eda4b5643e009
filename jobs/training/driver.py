"""The training driver: checks the config, reads the data once, starts the Ray Train workers,
exports the best epoch as a model artifact."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from jobs.cluster.capacity import await_nodes, check_holds, largest_node_cpus
from jobs.cluster.connect import connect_ray
from jobs.common.errors import UserError
from jobs.inference.pipeline import slices
from jobs.storage.settings import StorageOptions, arrow_filesystem, configure_storage
from jobs.training import data as training_data
from jobs.training.config import TrainingPlan, TrainConfig, WorkerTask
from jobs.training.loop import DATA_CPUS, STATE_FILE, train_worker


def read_backbone(config: TrainConfig) -> dict[str, list[np.ndarray]] | None:
    """The --backbone-weights encoder layers' weights by layer name, read here on the driver: a file
    that cannot load ends the job in one line, not in the workers' tracebacks, and workers on other
    nodes get the arrays without needing the file."""
    if not config.backbone_weights:
        return None
    from unet_core import build_unet
    from unet_core.model import load_vgg16_weights

    model = build_unet(
        config.num_classes, (config.input_size,) * 2 + (3,), config.base_filters, normalization=config.normalization
    )
    try:
        loaded = load_vgg16_weights(model, config.backbone_weights)
    except (OSError, ValueError) as exc:  # OSError: not an HDF5 file
        raise UserError(str(exc), "backbone_weights") from None
    print(f"loaded VGG16 weights into {loaded} encoder layers from {config.backbone_weights}", flush=True)
    return {
        layer.name: layer.get_weights() for layer in model.layers if layer.name.startswith("block") and layer.weights
    }


def load_splits(config: TrainConfig) -> tuple:
    """(train pairs, validation pairs) from the flags."""
    if config.voc:
        return training_data.voc_pairs(config.voc, "train"), training_data.voc_pairs(config.voc, "val")
    pairs = training_data.pair_by_stem(config.images, config.masks)
    if config.val_images:
        return pairs, training_data.pair_by_stem(config.val_images, config.val_masks)
    return training_data.split_validation(pairs, config.val_fraction, config.seed)


def plan_run(config: TrainConfig, train_pairs, val_pairs, pixels) -> tuple[TrainingPlan, float]:
    """Samples per pair and steps per epoch (equal on every worker: the collectives need it), and CPUs
    per worker. `pixels`: each training image's area, from its header."""
    import ray

    crops = epoch_crops(config, pixels)
    worker_batch = config.batch_size // config.workers
    steps = (int(crops.sum()) // config.workers) // worker_batch
    if steps < 1:
        raise UserError(f"{int(crops.sum())} training samples cannot fill one global batch of {config.batch_size}")
    total_cpus = sum(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    cpus = config.cpus_per_worker or (
        1.0 if config.use_gpu else max(0.25, min(largest_node_cpus(), (total_cpus - DATA_CPUS) / config.workers))
    )
    plan = TrainingPlan(
        steps,
        worker_batch,
        max(1, round(cpus)),
        training_data.fingerprint(train_pairs),
        len(train_pairs),
        len(val_pairs),
        tuple(int(c) for c in crops),
    )
    return plan, cpus


def epoch_crops(config: TrainConfig, pixels) -> np.ndarray:
    if not config.patch_size:
        return np.ones(len(pixels), np.int64)
    if config.patches_per_image:
        return np.full(len(pixels), config.patches_per_image, np.int64)
    return training_data.crops_per_image(pixels, config.patch_size)


def describe_epoch(config: TrainConfig, plan: TrainingPlan) -> str:
    """What one epoch is, in the run's first line: a new data set's user must see whether an epoch
    covers their data."""
    crops, total = np.array(plan.crops), sum(plan.crops)
    if not config.patch_size:
        what = f"{total} whole images letterboxed to {config.input_size}"
    else:
        spread = f"{crops.min()}" if crops.min() == crops.max() else f"{crops.min()}-{crops.max()}"
        why = "set by --patches-per-image" if config.patches_per_image else "about every pixel once"
        what = (
            f"{total} {config.patch_size}x{config.patch_size} crops at full resolution ({spread} per image, "
            f"{why}), validated in tiles"
        )
    return (
        f"an epoch: {plan.train_pairs} images, {what}; {plan.steps_per_epoch} steps of global batch {config.batch_size}"
    )


def run_training(config: TrainConfig):
    """Fit with Ray Train; returns the Result, the plan and the checked config, the one that
    `export_artifact` takes. The config is checked here, so that a caller who builds a TrainConfig
    rather than parsing flags gets the command's refusals and defaults."""
    config = config.checked()
    storage_env = configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    train_pairs, val_pairs = load_splits(config)
    backbone = read_backbone(config)
    # before Ray Train loads Ray: see connect_ray
    connect_ray(config.address, storage_env, config.verbosity, config.log_level)
    import unet_core.quiet_tensorflow  # noqa: F401  (Ray Train's TensorFlow trainer loads TensorFlow: see its docstring)
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    pixels = check_limits(train_pairs, val_pairs, config)
    plan, cpus = plan_run(config, train_pairs, val_pairs, pixels)
    worker = {"CPU": cpus, "GPU": 1.0} if config.use_gpu else {"CPU": cpus}
    check_holds(worker, config.workers, "training workers", "workers")
    await_nodes(worker, config.workers, config.wait_for_nodes, "training workers")
    print(
        f"training on {plan.train_pairs} pairs, validating on {plan.val_pairs}; {config.workers} workers x "
        f"{cpus:g} CPU{' + 1 GPU' if config.use_gpu else ''}",
        flush=True,
    )
    print(describe_epoch(config, plan), flush=True)
    trainer = TensorflowTrainer(
        train_worker,
        train_loop_config={"task": WorkerTask(config, plan, train_pairs, val_pairs, backbone)},
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(
            name=config.name,
            **checkpoint_storage(config.storage),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_miou", checkpoint_score_order="max"
            ),
        ),
    )
    return trainer.fit(), plan, config


def check_limits(train_pairs, val_pairs, config: TrainConfig) -> np.ndarray:
    """Refuse, in one line naming it, a pair whose image or mask is over --max-bytes or --max-pixels,
    from listed sizes and headers, before training: found by a worker mid-epoch, it would end the
    run in the workers' tracebacks. Returns each training image's pixel count, read on the way."""
    import pyarrow as pa
    import ray

    pairs = pa.concat_tables([train_pairs, val_pairs]).select(["image_uri", "mask_uri", "source_size", "mask_size"])
    pairs = pairs.append_column("position", pa.array(np.arange(len(pairs)), pa.int64()))
    facts = (
        ray.data.from_arrow(slices(pairs, 64))
        .map_batches(
            training_data.header_facts,
            batch_size=64,
            num_cpus=DATA_CPUS,
            fn_kwargs={"max_pixels": config.max_pixels, "max_bytes": config.max_bytes},
        )
        .take_all()
    )
    refused = [row["refusal"] for row in sorted(facts, key=lambda row: row["position"]) if row["refusal"]]
    if refused:
        raise UserError(refused[0])
    pixels = np.zeros(len(pairs), np.int64)
    for row in facts:
        pixels[row["position"]] = row["pixels"]
    return pixels[: len(train_pairs)]


def checkpoint_storage(uri: str | None) -> dict:
    """Ray Train's storage arguments, with pyarrow told the same S3 endpoint and options as fsspec."""
    if uri is None:
        return {}
    filesystem, path = arrow_filesystem(uri)
    return {"storage_path": path, "storage_filesystem": filesystem}


@dataclasses.dataclass(frozen=True)
class Exported:
    """The epoch that became the artifact, as the command reports it to its user. The full provenance
    stays a dict (`source` in the artifact's metadata): the metadata's JSON is its only reader."""

    epoch: int
    val_miou: float


def export_artifact(result, config: TrainConfig, plan: TrainingPlan) -> Exported:
    """Write the chosen epoch's weights as an artifact, with the training provenance."""
    from unet_core import build_unet, save_artifact
    from unet_core.training import weights_from_state

    if config.export == "last":
        checkpoint, metrics = result.checkpoint, result.metrics
    else:
        validated = [item for item in result.best_checkpoints if item[1].get("validated", True)]
        checkpoint, metrics = max(validated, key=lambda item: item[1]["val_miou"])
    with checkpoint.as_directory() as folder:
        with np.load(os.path.join(folder, STATE_FILE)) as arrays:
            weights = weights_from_state(dict(arrays))
        digests = sorted({Path(p).read_text() for p in Path(folder).glob("replica-*.sha256")})
    model = build_unet(
        config.num_classes, (config.input_size,) * 2 + (3,), config.base_filters, normalization=config.normalization
    )
    model.set_weights(weights)
    source = {
        "trained_by": "jobs/train.py",
        "run_name": config.name,
        "checkpoint": checkpoint.path,
        "data_fingerprint": plan.fingerprint,
        "train_pairs": plan.train_pairs,
        "val_pairs": plan.val_pairs,
        "exported": config.export,
        "exported_epoch": metrics["epoch"],
        "epochs": config.epochs,
        "optimizer_step": metrics["optimizer_step"],
        "val_miou": metrics["val_miou"],
        "val_pixel_accuracy": metrics["val_pixel_accuracy"],
        "val_iou": dict(zip(config.class_names, metrics["val_iou"])),
        "replica_weight_digests": digests,
        "workers": config.workers,
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "address"},
    }
    save_artifact(
        model,
        config.output,
        list(config.class_names),
        name=config.name,
        source=source,
        mode="tile" if config.patch_size else "letterbox",
    )
    return Exported(metrics["epoch"], metrics["val_miou"])
