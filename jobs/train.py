"""Train the seed U-Net data-parallel with Ray Train; export the best epoch as a model artifact.

    python jobs/train.py --images data/img/ --masks data/masks/ --num-classes 2 --output models/v1 \\
        --workers 2 --name membranes --storage s3://bucket/checkpoints
    python jobs/train.py --voc VOCdevkit/VOC2012 --num-classes 21 --output s3://bucket/models/voc

Starting the same --name/--storage again resumes from its last checkpoint (epoch, weights and
optimizer state). The artifact goes straight to jobs/segment.py and jobs/evaluate.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from jobs.cli.flags import add_limit_flags, add_storage_flags
from jobs.cli.types import add_wait_flag, non_negative_float, open_fraction, positive_float, positive_int  # noqa: E402
from jobs.cluster.nodes import await_nodes, check_holds, connect_ray, largest_node_cpus  # noqa: E402
from jobs.common.errors import UserError, run_main  # noqa: E402
from jobs.inference.pipeline import slices  # noqa: E402
from jobs.storage.files import DEFAULT_MAX_BYTES
from jobs.storage.settings import StorageOptions, arrow_filesystem, configure_storage
from jobs.training import data as training_data  # noqa: E402
from jobs.training.loop import DATA_CPUS, STATE_FILE, train_worker  # noqa: E402
from unet_core import DEFAULT_MAX_PIXELS  # noqa: E402
from unet_core.image import PRECISIONS  # noqa: E402
from unet_core.losses import LOSSES  # noqa: E402
from unet_core.masks import VOC_CLASS_NAMES  # noqa: E402
from unet_core.training import OPTIMIZERS, SCHEDULES  # noqa: E402


@dataclass(frozen=True)
class TrainConfig:
    output: str
    num_classes: int
    images: str | None = None
    masks: str | None = None
    voc: str | None = None
    val_images: str | None = None
    val_masks: str | None = None
    val_fraction: float = 0.2
    mask_map: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    ignore_index: int | None = None
    class_names: tuple[str, ...] | None = None
    input_size: int = 256
    patch_size: int | None = None
    patches_per_image: int = 1
    base_filters: int = 64
    backbone_weights: str | None = None
    epochs: int = 20
    batch_size: int = 8
    loss: str = "ce+dice"
    class_weights: tuple[float, ...] | None = None
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    augment: bool = True
    precision: str = "auto"
    seed: int = 0
    export: str = "best"
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    name: str | None = None
    storage: str | None = None
    address: str | None = None
    wait_for_nodes: float = 300.0
    s3_endpoint_url: str | None = None
    anonymous: bool = False


@dataclass(frozen=True)
class Plan:
    """What every worker must agree on before the first step."""

    steps_per_epoch: int
    worker_batch: int
    threads: int
    fingerprint: str
    train_pairs: int
    val_pairs: int


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--images", metavar="URI", help="folder/prefix of training images (local or s3://)")
    data.add_argument("--masks", metavar="URI", help="folder/prefix of masks, paired with images by file stem")
    data.add_argument("--voc", metavar="ROOT", help="a Pascal VOC tree instead (JPEGImages/, SegmentationClass/, "
                                                    "ImageSets/Segmentation/train.txt and val.txt)")
    data.add_argument("--val-images", metavar="URI", help="validation images (default: hold out --val-fraction)")
    data.add_argument("--val-masks", metavar="URI", help="validation masks")
    data.add_argument("--val-fraction", type=open_fraction, default=0.2,
                      help="share of pairs held out for validation when no validation set is given (default 0.2)")
    data.add_argument("--mask-map", metavar="V:C,...", help="map stored mask values to classes, e.g. 255:1 for 0/255 masks")
    add_limit_flags(data)
    data.add_argument("--ignore-index", type=int, default=None,
                      help="label excluded from loss and metrics (e.g. 11 for CamVid void, 255 for VOC borders)")
    data.add_argument("--class-names", metavar="A,B,...", help="comma-separated class names (default: class_0, ...)")
    model = parser.add_argument_group("model")
    model.add_argument("--num-classes", type=positive_int, required=True)
    model.add_argument("--input-size", type=positive_int, default=None,
                       help="square model input side, multiple of 16; whole images are letterboxed into it (default 256)")
    model.add_argument("--patch-size", type=positive_int, default=None,
                       help="train on random N x N crops of the full-resolution images instead (a third centred on "
                            "classes other than the image's most common) and validate in tiles at full resolution; "
                            "the model's input is N and segment.py/evaluate.py run it in tile mode. For images "
                            "larger than the input.")
    model.add_argument("--patches-per-image", type=positive_int, default=1,
                       help="with --patch-size, crops of each image per epoch (default 1): an image many times the "
                            "patch's area needs several for an epoch to cover it")
    model.add_argument("--base-filters", type=positive_int, default=64, help="width; 64 is the seed model (default 64)")
    model.add_argument("--backbone-weights", metavar="FILE",
                       help="VGG16 ImageNet weights (.h5, e.g. Keras' ..._notop.h5) loaded into the encoder by "
                            "layer name; needs --base-filters 64. Nothing is downloaded.")
    fit = parser.add_argument_group("optimisation")
    fit.add_argument("--epochs", type=positive_int, default=20)
    fit.add_argument("--batch-size", type=positive_int, default=8, help="global batch, split over the workers (default 8)")
    fit.add_argument("--loss", choices=LOSSES, default="ce+dice",
                     help="ce+dice (default) keeps rare classes from collapsing into background")
    fit.add_argument("--class-weights", metavar="W,W,...", help="one loss weight per class")
    fit.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    fit.add_argument("--learning-rate", type=positive_float, default=1e-3)
    fit.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="decay to 0 over the run (default cosine)")
    fit.add_argument("--warmup-epochs", type=non_negative_float, default=0.0, help="linear warm-up (cosine only)")
    fit.add_argument("--no-augment", dest="augment", action="store_false",
                     help="turn off random scale/crop, flip and brightness/contrast jitter")
    fit.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="auto (default): bfloat16 on CPUs with bf16 instructions, float16 with loss scaling on "
                          "GPUs, else float32; weights, softmax and loss stay float32")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--export", choices=("best", "last"), default="best",
                     help="which epoch becomes the artifact: best validation mIoU (default) or the last one "
                          "(when the validation set is also your test set, so it must not pick the model)")
    run = parser.add_argument_group("cluster and checkpoints")
    run.add_argument("--workers", type=positive_int, default=1, help="data-parallel training workers (default 1)")
    run.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    run.add_argument("--cpus-per-worker", type=positive_float, default=None,
                     help="default: 1 with GPUs, else the cluster's CPUs shared by the workers with 0.5 left for reading")
    run.add_argument("--name", help="run name; the same --name and --storage resume (default: the output's name)")
    run.add_argument("--storage", metavar="URI", help="where checkpoints go, local or s3:// (default: ~/ray_results)")
    add_wait_flag(run)
    run.add_argument("--address", help="Ray cluster (default: RAY_ADDRESS, else a local Ray in-process)")
    add_storage_flags(run)
    parser.add_argument("--output", metavar="URI", required=True, help="where the model artifact is written")
    args = vars(parser.parse_args(argv))
    args["class_names"] = tuple(args["class_names"].split(",")) if args["class_names"] else None
    args["class_weights"] = _weights(args["class_weights"])
    return check_config(TrainConfig(**args))


def _weights(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise UserError(f"--class-weights {text!r}: expected comma-separated numbers") from None


def check_config(config: TrainConfig) -> TrainConfig:
    if (config.voc is None) == (config.images is None):
        raise UserError("give either --images and --masks, or --voc")
    if config.images and not config.masks:
        raise UserError("--images needs --masks")
    if bool(config.val_images) != bool(config.val_masks):
        raise UserError("--val-images and --val-masks go together")
    if config.num_classes < 2:
        raise UserError("--num-classes must be at least 2")
    if config.patch_size and config.input_size not in (None, config.patch_size):
        raise UserError("--patch-size sets the model input: drop --input-size")
    if config.patches_per_image > 1 and not config.patch_size:
        raise UserError("--patches-per-image needs --patch-size")
    size = config.patch_size or config.input_size or 256
    if size % 16:
        raise UserError(f"--{'patch' if config.patch_size else 'input'}-size {size}: must be a multiple of 16")
    if config.batch_size % config.workers:
        raise UserError(f"--batch-size {config.batch_size} must be a multiple of --workers {config.workers}")
    names = config.class_names or (VOC_CLASS_NAMES[:config.num_classes] if config.voc and config.num_classes <= 21 else None)
    names = names or tuple(f"class_{i}" for i in range(config.num_classes))
    if len(names) != config.num_classes:
        raise UserError(f"--class-names gives {len(names)} names for --num-classes {config.num_classes}")
    if config.class_weights and len(config.class_weights) != config.num_classes:
        raise UserError(f"--class-weights gives {len(config.class_weights)} weights for {config.num_classes} classes")
    if config.backbone_weights and config.base_filters != 64:
        raise UserError("--backbone-weights holds VGG16 at full width: use --base-filters 64")
    if config.backbone_weights and not os.path.isfile(config.backbone_weights):
        raise UserError(f"--backbone-weights {config.backbone_weights}: no such file")
    name = config.name or Path(config.output.rstrip("/")).name or "unet"
    weights = config.backbone_weights and os.path.abspath(config.backbone_weights)  # provenance names the file in full
    return dataclasses.replace(config, class_names=tuple(names), name=name, input_size=size, backbone_weights=weights)


def read_backbone(config: TrainConfig) -> dict[str, list[np.ndarray]] | None:
    """The --backbone-weights encoder layers' weights by layer name, read here on the driver: a file
    that cannot load ends the job in one line, not in the workers' tracebacks, and workers on other
    nodes get the arrays without needing the file."""
    if not config.backbone_weights:
        return None
    from unet_core import build_unet
    from unet_core.model import load_vgg16_weights

    model = build_unet(config.num_classes, (config.input_size,) * 2 + (3,), config.base_filters)
    try:
        loaded = load_vgg16_weights(model, config.backbone_weights)
    except (OSError, ValueError) as exc:  # OSError: not an HDF5 file
        raise UserError(f"--backbone-weights: {exc}") from None
    print(f"loaded VGG16 weights into {loaded} encoder layers from {config.backbone_weights}", flush=True)
    return {layer.name: layer.get_weights() for layer in model.layers if layer.name.startswith("block") and layer.weights}


def load_splits(config: TrainConfig) -> tuple:
    """(train pairs, validation pairs) from the flags."""
    if config.voc:
        return training_data.voc_pairs(config.voc, "train"), training_data.voc_pairs(config.voc, "val")
    pairs = training_data.pair_by_stem(config.images, config.masks)
    if config.val_images:
        return pairs, training_data.pair_by_stem(config.val_images, config.val_masks)
    return training_data.split_validation(pairs, config.val_fraction, config.seed)


def plan_run(config: TrainConfig, train_pairs, val_pairs) -> tuple[Plan, float]:
    """Steps per epoch (equal on every worker: the collectives need it) and CPUs per worker."""
    import ray

    worker_batch = config.batch_size // config.workers
    steps = (len(train_pairs) * config.patches_per_image // config.workers) // worker_batch
    if steps < 1:
        raise UserError(f"{len(train_pairs) * config.patches_per_image} training samples cannot fill one global "
                        f"batch of {config.batch_size}")
    total_cpus = sum(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    cpus = config.cpus_per_worker or (1.0 if config.use_gpu else
                                      max(0.25, min(largest_node_cpus(), (total_cpus - DATA_CPUS) / config.workers)))
    plan = Plan(steps, worker_batch, max(1, round(cpus)), training_data.fingerprint(train_pairs),
                len(train_pairs), len(val_pairs))
    return plan, cpus


def run_training(config: TrainConfig):
    """Fit with Ray Train and return the Result."""
    storage_env = configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    train_pairs, val_pairs = load_splits(config)
    backbone = read_backbone(config)
    connect_ray(config.address, storage_env)  # before Ray Train loads Ray: see connect_ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    check_limits(train_pairs, val_pairs, config)
    plan, cpus = plan_run(config, train_pairs, val_pairs)
    worker = {"CPU": cpus, "GPU": 1.0} if config.use_gpu else {"CPU": cpus}
    check_holds(worker, config.workers, f"--workers {config.workers}", "training workers")
    await_nodes(worker, config.workers, config.wait_for_nodes, "training workers")
    print(f"training on {plan.train_pairs} pairs, validating on {plan.val_pairs}; {config.workers} workers x "
          f"{cpus:g} CPU{' + 1 GPU' if config.use_gpu else ''}, {plan.steps_per_epoch} steps of "
          f"{config.batch_size} per epoch; " + (f"{config.patch_size}x{config.patch_size} patches at full resolution, "
                                                 "validated in tiles" if config.patch_size else
                                                 f"whole images letterboxed to {config.input_size}"), flush=True)
    trainer = TensorflowTrainer(
        train_worker,
        train_loop_config={"config": config, "plan": plan, "train_pairs": train_pairs, "val_pairs": val_pairs,
                           "backbone": backbone},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(
            name=config.name, **checkpoint_storage(config.storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_miou",
                                               checkpoint_score_order="max")),
    )
    return trainer.fit(), plan


def check_limits(train_pairs, val_pairs, config: TrainConfig) -> None:
    """Refuse, in one line naming it, a pair whose image or mask is over --max-bytes or --max-pixels,
    from listed sizes and headers, before training: found by a worker mid-epoch, it would end the
    run in the workers' tracebacks."""
    import pyarrow as pa
    import ray

    pairs = pa.concat_tables([train_pairs, val_pairs])
    refused = ray.data.from_arrow(slices(pairs, 64)).map_batches(
        training_data.refusals, batch_size=64, num_cpus=DATA_CPUS,
        fn_kwargs={"max_pixels": config.max_pixels, "max_bytes": config.max_bytes})
    first = next(iter(refused.iter_rows()), None)
    if first is not None:
        raise UserError(first["refusal"])


def checkpoint_storage(uri: str | None) -> dict:
    """Ray Train's storage arguments, with pyarrow told the same S3 endpoint and options as fsspec."""
    if uri is None:
        return {}
    filesystem, path = arrow_filesystem(uri)
    return {"storage_path": path, "storage_filesystem": filesystem}


def export_artifact(result, config: TrainConfig, plan: Plan) -> dict:
    """Write the chosen epoch's weights as an artifact, with the training provenance."""
    from unet_core import build_unet, save_artifact
    from unet_core.training import weights_from_state

    if config.export == "last":
        checkpoint, metrics = result.checkpoint, result.metrics
    else:
        checkpoint, metrics = max(result.best_checkpoints, key=lambda item: item[1]["val_miou"])
    with checkpoint.as_directory() as folder:
        with np.load(os.path.join(folder, STATE_FILE)) as arrays:
            weights = weights_from_state(dict(arrays))
        digests = sorted({Path(p).read_text() for p in Path(folder).glob("replica-*.sha256")})
    model = build_unet(config.num_classes, (config.input_size,) * 2 + (3,), config.base_filters)
    model.set_weights(weights)
    source = {
        "trained_by": "jobs/train.py", "run_name": config.name, "checkpoint": checkpoint.path,
        "data_fingerprint": plan.fingerprint, "train_pairs": plan.train_pairs, "val_pairs": plan.val_pairs,
        "exported": config.export, "exported_epoch": metrics["epoch"], "epochs": config.epochs,
        "optimizer_step": metrics["optimizer_step"],
        "val_miou": metrics["val_miou"], "val_pixel_accuracy": metrics["val_pixel_accuracy"],
        "val_iou": dict(zip(config.class_names, metrics["val_iou"])), "replica_weight_digests": digests,
        "workers": config.workers, "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "address"},
    }
    save_artifact(model, config.output, list(config.class_names), name=config.name, source=source,
                  mode="tile" if config.patch_size else "letterbox")
    return source


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    started = time.time()
    result, plan = run_training(config)
    source = export_artifact(result, config, plan)
    print(f"{config.export} epoch {source['exported_epoch']}: val mIoU {source['val_miou']:.4f}; artifact written to "
          f"{config.output} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    run_main(main)
