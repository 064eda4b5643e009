"""Benchmark: do the quality signals find the masks to distrust, and does drift see a night unlike the others?

    python bench/review_drift.py [--images 200] [--novel 10] [--work bench-work/review-drift] [--model URI]

The demo's model (a narrow U-Net trained on synthetic scenes of discs, boxes and triangles, as
`segment.py --demo` trains it) segments four nights of scenes into one output root, each its own run:

- ordinary-1, ordinary-2: ordinary scenes, each night its own draw;
- novel: every scene with a yellow five-pointed star painted in, a shape the model never saw;
- mixed: ordinary scenes and `--novel` of them with the star, segmented once as is and once more
  with `--tta flip` (into a root of its own).

Then `query.py review --limit 10` of both mixed runs (how many of the top 10 hold the star),
`query.py drift` of ordinary-2 against ordinary-1 (expected: status 0) and of the novel night against
the two ordinary ones (expected: status 6, naming what moved), each run as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common import ROOT, print_table

STAR = (235, 205, 40)


def star_points(rng: np.random.Generator, height: int, width: int) -> list[tuple[float, float]]:
    radius = rng.uniform(0.22, 0.35) * min(height, width)
    cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
    turn = rng.uniform(0, 2 * math.pi)
    return [
        (cx + r * math.cos(turn + i * math.pi / 5), cy + r * math.sin(turn + i * math.pi / 5))
        for i, r in enumerate([radius, radius * 0.45] * 5)
    ]


def write_night(folder: Path, count: int, novel: int, seed: int) -> set[str]:
    """`count` scenes, the first `novel` of them with a star; returns the names of those."""
    from unet_core.synthetic import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    starred = set()
    for index in range(count):
        height, width = (int(v) for v in rng.integers(48, 160, size=2))
        image, _ = make_scene(rng, height, width)
        name = f"{seed}-{index:04d}.png"
        if index < novel:
            canvas = Image.fromarray(image)
            ImageDraw.Draw(canvas).polygon(star_points(rng, height, width), fill=STAR)
            image = np.asarray(canvas)
            starred.add(name)
        Image.fromarray(image).save(folder / name)
    return starred


def segment(folder: Path, output: Path, model: Path, run_id: str, *flags: str) -> None:
    done = job(
        "segment.py",
        "--input",
        str(folder),
        "--output",
        str(output),
        "--model",
        str(model),
        "--run-id",
        run_id,
        "--quiet",
        *flags,
    )
    if done.returncode:
        sys.exit(f"segment {run_id} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def job(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / script), *args], capture_output=True, text=True, cwd=ROOT
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="scenes per night (default 200)")
    parser.add_argument("--novel", type=int, default=10, help="scenes with the star in the mixed night (default 10)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-work" / "review-drift")
    parser.add_argument("--model", type=Path, help="segment with this artifact instead of the demo's model")
    parser.add_argument(
        "--tta-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also segment the mixed night with --tta flip (default: yes)",
    )
    args = parser.parse_args()
    from jobs.inference.demo import train_demo_model

    model = args.model or args.work / "model"
    if not (model / "metadata.json").exists():
        train_demo_model(str(model))
    output = args.work / "output"
    for folder in ("output", "output-tta", "nights"):
        shutil.rmtree(args.work / folder, ignore_errors=True)
    nights = {"ordinary-1": (0, 21), "ordinary-2": (0, 22), "novel": (args.images, 23), "mixed": (args.novel, 24)}
    starred = {}
    for run_id, (novel, seed) in nights.items():
        starred[run_id] = write_night(args.work / "nights" / run_id, args.images, novel, seed)
        segment(args.work / "nights" / run_id, output, model, run_id)
    reviewed = [(output, "mixed")]
    if args.tta_run:
        segment(args.work / "nights" / "mixed", args.work / "output-tta", model, "mixed-tta", "--tta", "flip")
        reviewed.append((args.work / "output-tta", "mixed-tta"))

    for root, run_id in reviewed:
        review = job("query.py", "--output", str(root), "review", "--run", run_id, "--limit", "10", "--format", "json")
        top = json.loads(review.stdout)
        found = sum(Path(row["image_uri"]).name in starred["mixed"] for row in top)
        print(
            f"\nreview --run {run_id} --limit 10: {found} of the top 10 hold the star ({len(starred['mixed'])} of "
            f"the night's {args.images} do)"
        )
        print_table(
            ["rank", "image", "star", "review score"],
            [
                [
                    rank + 1,
                    Path(row["image_uri"]).name,
                    Path(row["image_uri"]).name in starred["mixed"],
                    f"{row['review_score']:.4f}",
                ]
                for rank, row in enumerate(top)
            ],
        )
    rows = []
    for run_id, baseline in (("ordinary-2", "1"), ("novel", "2")):
        drift = job("query.py", "--output", str(output), "drift", "--run", run_id, "--baseline-runs", baseline)
        print(f"\n$ query.py drift --run {run_id} --baseline-runs {baseline}: status {drift.returncode}")
        print(drift.stdout + drift.stderr, end="")
        rows.append(
            [run_id, baseline, drift.returncode, sum(line.startswith("drift:") for line in drift.stderr.splitlines())]
        )
    print()
    print_table(["run", "baseline runs", "drift status", "measures moved"], rows)


if __name__ == "__main__":
    main()
