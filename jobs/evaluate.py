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

from jobs.cli.flags import add_replica_flags, add_version_flag, config_from
from jobs.cli.main import run_main
from jobs.cli.types import mask_map
from jobs.training.config import EvaluateConfig
from jobs.storage.files import join
from jobs.training.evaluation import METRICS_FILE, PER_IMAGE_FILE, Evaluation, evaluate


def parse_args(argv: list[str] | None = None) -> EvaluateConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(parser)
    parser.add_argument("--model", required=True, metavar="URI", help="model artifact folder")
    parser.add_argument("--images", required=True, metavar="URI", help="folder/prefix of labelled images")
    parser.add_argument("--masks", required=True, metavar="URI", help="their masks, paired by file stem")
    parser.add_argument(
        "--output", required=True, metavar="URI", help=f"folder for {METRICS_FILE} and {PER_IMAGE_FILE}"
    )
    parser.add_argument(
        "--mask-map", type=mask_map, metavar="V:C,...", help="map stored mask values to classes, e.g. 255:1"
    )
    parser.add_argument("--ignore-index", type=int, default=None, help="label left out of every metric")
    add_replica_flags(parser)
    return config_from(EvaluateConfig, parser.parse_args(argv))


def print_table(evaluation: Evaluation) -> None:
    summary = evaluation.summary
    print(f"{'class':<20} {'pixels':>12} {'IoU':>8} {'Dice':>8}")
    for name in summary.iou:
        iou, dice = summary.iou[name], summary.dice[name]
        print(
            f"{name:<20} {summary.pixels[name]:>12,} {'-' if iou is None else f'{iou:.4f}':>8} "
            f"{'-' if dice is None else f'{dice:.4f}':>8}"
        )
    print(
        f"mIoU {summary.mean_iou:.4f}, pixel accuracy {summary.pixel_accuracy:.4f} "
        f"(pixel error {summary.pixel_error:.4f}) over {evaluation.images} images, {evaluation.errors} errors"
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print_table(evaluate(config))
    print(f"written: {join(config.output, METRICS_FILE)}, {join(config.output, PER_IMAGE_FILE)}")
    return 0


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
