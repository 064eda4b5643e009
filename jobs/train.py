"""Train the seed U-Net data-parallel with Ray Train; export the best epoch as a model artifact.

    python jobs/train.py --images data/img/ --masks data/masks/ --num-classes 2 --output models/v1 \\
        --workers 2 --name membranes --storage s3://bucket/checkpoints
    python jobs/train.py --voc VOCdevkit/VOC2012 --num-classes 21 --output s3://bucket/models/voc

Starting the same --name/--storage again resumes from its last checkpoint (epoch, weights and
optimizer state). The artifact goes straight to jobs/segment.py and jobs/evaluate.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from jobs.cli.flags import add_cluster_flags, add_json_flag, add_limit_flags, add_storage_flags, add_version_flag
from jobs.cli.main import run_main
from jobs.cli.types import mask_map, non_negative_float, open_fraction, positive_float, positive_int
from jobs.common.errors import UserError
from jobs.training.config import TrainConfig
from jobs.training.driver import export_artifact, run_training
from jobs.training.loop import COLLAPSE_CAUSES
from unet_core.image import PRECISIONS
from unet_core.metadata import read_metadata
from unet_core.recipe import LOSSES, NORMALIZATIONS, OPTIMIZERS, SCHEDULES


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--images", metavar="URI", help="folder/prefix of training images (local or s3://)")
    data.add_argument("--masks", metavar="URI", help="folder/prefix of masks, paired with images by file stem")
    data.add_argument(
        "--voc",
        metavar="ROOT",
        help="a Pascal VOC tree instead (JPEGImages/, SegmentationClass/, "
        "ImageSets/Segmentation/train.txt and val.txt)",
    )
    data.add_argument("--val-images", metavar="URI", help="validation images (default: hold out --val-fraction)")
    data.add_argument("--val-masks", metavar="URI", help="validation masks")
    data.add_argument(
        "--val-fraction",
        type=open_fraction,
        default=0.2,
        help="share of pairs held out for validation when no validation set is given (default 0.2)",
    )
    data.add_argument(
        "--mask-map",
        type=mask_map,
        metavar="V:C,...",
        help="map stored mask values to classes, e.g. 255:1 for 0/255 masks",
    )
    add_limit_flags(data)
    data.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="label excluded from loss and metrics (e.g. 11 for CamVid void, 255 for VOC borders)",
    )
    data.add_argument("--class-names", metavar="A,B,...", help="comma-separated class names (default: class_0, ...)")
    model = parser.add_argument_group("model")
    model.add_argument("--num-classes", type=positive_int, required=True)
    model.add_argument(
        "--input-size",
        type=positive_int,
        default=None,
        help="square model input side, multiple of 16; whole images are letterboxed into it (default 256)",
    )
    model.add_argument(
        "--patch-size",
        type=positive_int,
        default=None,
        help="train on random N x N crops of the full-resolution images instead (a third centred on "
        "classes other than the image's most common) and validate in tiles at full resolution; "
        "the model's input is N and segment.py/evaluate.py run it in tile mode. For images "
        "larger than the input.",
    )
    model.add_argument(
        "--patches-per-image",
        type=positive_int,
        default=None,
        help="with --patch-size, crops of each image per epoch (default: the image's area in patches, "
        "at least 1, so that an epoch covers about every pixel once)",
    )
    model.add_argument("--base-filters", type=positive_int, default=64, help="width; 64 is the seed model (default 64)")
    model.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default="none",
        help="batch or group normalization after every 3x3 convolution, for training from scratch "
        "(not the seed's graph; default none: the seed's)",
    )
    model.add_argument(
        "--backbone-weights",
        metavar="FILE",
        help="VGG16 ImageNet weights (.h5, e.g. Keras' ..._notop.h5) loaded into the encoder by "
        "layer name; needs --base-filters 64. Nothing is downloaded.",
    )
    fit = parser.add_argument_group("optimisation")
    fit.add_argument("--epochs", type=positive_int, default=20, help="passes over the training set (default 20)")
    fit.add_argument(
        "--validate-every",
        type=positive_int,
        default=None,
        metavar="N",
        help="validate every N epochs and always the last (default: chosen after the second epoch, "
        "the first two validated, so that validation takes under a tenth of the run); checkpoints "
        "are written every epoch",
    )
    fit.add_argument(
        "--batch-size", type=positive_int, default=8, help="global batch, split over the workers (default 8)"
    )
    fit.add_argument(
        "--loss",
        choices=LOSSES,
        default="ce+dice",
        help="ce+dice (default) keeps rare classes from collapsing into background",
    )
    fit.add_argument("--class-weights", metavar="W,W,...", help="one loss weight per class")
    fit.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(default adam)")
    fit.add_argument("--learning-rate", type=positive_float, default=1e-3, help="peak learning rate (default 0.001)")
    fit.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="decay to 0 over the run (default cosine)")
    fit.add_argument(
        "--warmup-epochs", type=non_negative_float, default=0.0, help="linear warm-up (cosine only; default 0)"
    )
    fit.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="turn off random scale/crop, flip and brightness/contrast jitter",
    )
    fit.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): bfloat16 on CPUs with bf16 instructions, float16 with loss scaling on "
        "GPUs, else float32; weights, softmax and loss stay float32",
    )
    fit.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the validation split, the data order and the initialisation (default 0)",
    )
    fit.add_argument(
        "--stop-on-collapse",
        action="store_true",
        help="end the run with status 5 when the model predicts one class for the whole validation "
        "set a third of the way in or later (default: say so once and train on)",
    )
    fit.add_argument(
        "--export",
        choices=("best", "last"),
        default="best",
        help="which epoch becomes the artifact: best validation mIoU (default) or the last one "
        "(when the validation set is also your test set, so it must not pick the model)",
    )
    run = parser.add_argument_group("cluster and checkpoints")
    run.add_argument("--workers", type=positive_int, default=1, help="data-parallel training workers (default 1)")
    run.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    run.add_argument(
        "--cpus-per-worker",
        type=positive_float,
        default=None,
        help="default: 1 with GPUs, else the cluster's CPUs shared by the workers with 0.5 left for reading",
    )
    run.add_argument("--name", help="run name; the same --name and --storage resume (default: the output's name)")
    run.add_argument("--storage", metavar="URI", help="where checkpoints go, local or s3:// (default: ~/ray_results)")
    add_cluster_flags(run)
    add_storage_flags(run)
    parser.add_argument("--output", metavar="URI", required=True, help="where the model artifact is written")
    add_json_flag(parser)
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    args["class_names"] = tuple(args["class_names"].split(",")) if args["class_names"] else None
    args["class_weights"] = _weights(args["class_weights"])
    return TrainConfig(**args), as_json  # checked by run_training, before it starts anything


def _weights(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise UserError(f"--class-weights {text!r}: expected comma-separated numbers") from None


COLLAPSED = 5
"""Exit status of a run --stop-on-collapse ended."""


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    started = time.time()
    result, plan, config = run_training(config)
    collapsed_to = (result.metrics or {}).get("collapsed_to")
    if config.stop_on_collapse and collapsed_to:
        print(
            f"error: training collapsed at epoch {result.metrics['epoch']}/{config.epochs}: no validation pixel of "
            f"any class but {collapsed_to} is found; no artifact written. {COLLAPSE_CAUSES}",
            file=sys.stderr,
        )
        return COLLAPSED
    exported = export_artifact(result, config, plan)
    if as_json:
        print(
            json.dumps(
                {
                    "output": config.output,
                    "export": config.export,
                    "exported_epoch": exported.epoch,
                    "val_miou": exported.val_miou,
                    "seconds": round(time.time() - started, 3),
                    "model_sha256": read_metadata(config.output).sha256,
                }
            )
        )
    else:
        print(
            f"{config.export} epoch {exported.epoch}: val mIoU {exported.val_miou:.4f}; artifact written "
            f"to {config.output} ({time.time() - started:.0f} s)"
        )
    return 0


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
