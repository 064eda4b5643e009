"""Train on a real labelled set with jobs/train.py, score held-out data with jobs/evaluate.py, print the figures.

    python bench/train_eval.py isbi      # ISBI 2012 membranes: slices 0-24 train, 25-29 held out
    python bench/train_eval.py camvid    # CamVid 11 classes: train/ (367) train, val/ (101) held out, void=11 ignored

Not a test: it needs the data sets (default ../shared/data, see --data) and takes minutes.
Every run starts from scratch (a fresh --name), so the wall time is the whole training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DATASETS = {
    "isbi": {
        "train": [
            "--num-classes",
            "2",
            "--class-names",
            "membrane,cell",
            "--mask-map",
            "255:1",
            "--patch-size",
            "256",
            "--base-filters",
            "8",
            "--learning-rate",
            "2e-3",
            "--batch-size",
            "8",
            "--epochs",
            "60",
            "--export",
            "last",
        ],
        "evaluate": ["--mask-map", "255:1"],
        "primary": "membrane",
    },
    "camvid": {
        "train": [
            "--num-classes",
            "11",
            "--ignore-index",
            "11",
            "--class-names",
            "sky,building,pole,road,pavement,tree,sign,fence,car,pedestrian,bicyclist",
            "--input-size",
            "256",
            "--base-filters",
            "16",
            "--loss",
            "ce",
            "--learning-rate",
            "2e-3",
            "--batch-size",
            "8",
            "--epochs",
            "6",
            "--export",
            "last",
        ],
        "evaluate": ["--ignore-index", "11"],
        "primary": None,
    },
}


def link_split(source_images: Path, source_masks: Path, names: list[str], target: Path) -> tuple[Path, Path]:
    """Symlink the chosen files into images/ and masks/ folders: the split, without copying data."""
    for kind, source in (("images", source_images), ("masks", source_masks)):
        (target / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = target / kind / name
            if not link.exists():
                link.symlink_to((source / name).resolve())
    return target / "images", target / "masks"


def splits(dataset: str, data: Path, work: Path) -> dict[str, tuple[Path, Path]]:
    if dataset == "isbi":
        base = data / "isbi2012-membrane" / "train"
        names = [f"{i}.png" for i in range(30)]
        return {
            "train": link_split(base / "image", base / "label", names[:25], work / "train"),
            "held_out": link_split(base / "image", base / "label", names[25:], work / "held_out"),
        }
    base = data / "camvid"
    return {"train": (base / "train", base / "trainannot"), "held_out": (base / "val", base / "valannot")}


def run(script: str, *args: str) -> float:
    started = time.time()
    print(f"$ python jobs/{script} {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], cwd=ROOT)
    if done.returncode:
        sys.exit(f"jobs/{script} failed with status {done.returncode}")
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="folder holding isbi2012-membrane/ and camvid/ (default: ../shared/data)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "bench-work", help="splits, checkpoints, model, metrics")
    parser.add_argument(
        "--workers",
        default="1",
        help="Ray Train workers (default 1: on a 2-core machine one 2-thread worker outruns two 1-thread ones)",
    )
    parser.add_argument("--epochs", help="override the documented epoch budget")
    args, extra = parser.parse_known_args()
    spec = DATASETS[args.dataset]
    work = (args.work / args.dataset).resolve()
    data = splits(args.dataset, args.data, work)
    name = f"{args.dataset}-{time.strftime('%Y%m%dT%H%M%S')}"
    model, evaluation = work / "models" / name, work / "eval" / name
    train_args = [*spec["train"], *(["--epochs", args.epochs] if args.epochs else []), *extra]
    train_seconds = run(
        "train.py",
        "--images",
        str(data["train"][0]),
        "--masks",
        str(data["train"][1]),
        "--val-images",
        str(data["held_out"][0]),
        "--val-masks",
        str(data["held_out"][1]),
        "--workers",
        args.workers,
        "--name",
        name,
        "--storage",
        str(work / "checkpoints"),
        "--output",
        str(model),
        *train_args,
    )
    eval_seconds = run(
        "evaluate.py",
        "--model",
        str(model),
        "--images",
        str(data["held_out"][0]),
        "--masks",
        str(data["held_out"][1]),
        "--output",
        str(evaluation),
        *spec["evaluate"],
    )
    metrics = json.loads((evaluation / "metrics.json").read_text())
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "train_args": train_args,
                "workers": args.workers,
                "cpus": os.cpu_count(),
                "train_wall_seconds": round(train_seconds),
                "evaluate_wall_seconds": round(eval_seconds),
                "held_out_images": metrics["images"],
                "pixel_error": round(metrics["pixel_error"], 4),
                "mean_iou": round(metrics["mean_iou"], 4),
                "iou": {k: None if v is None else round(v, 4) for k, v in metrics["iou"].items()},
                "model": str(model),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
