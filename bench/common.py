"""Shared pieces of the benchmarks: the seed model as an artifact, generated images, timing and tables."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SEED_GFLOP_512 = 451.0
"""Forward cost of the seed model per 512x512 image (225.5 GMAC); it scales with the pixel count."""


def gflop_per_image(size: int, base_filters: int = 64) -> float:
    return SEED_GFLOP_512 * (size / 512) ** 2 * (base_filters / 64) ** 2


def seed_artifact(folder: Path, size: int = 512, base_filters: int = 64, classes: int = 21) -> str:
    """The seed architecture with random weights: speed does not depend on what the weights learnt."""
    import keras

    from unet_core import build_unet, save_artifact
    from unet_core.masks import VOC_CLASS_NAMES

    uri = str(folder / f"seed-{size}-{base_filters}")
    if not (Path(uri) / "metadata.json").exists():
        keras.utils.set_random_seed(0)
        model = build_unet(classes, (size, size, 3), base_filters=base_filters)
        names = list(VOC_CLASS_NAMES) if classes == 21 else [f"class{i}" for i in range(classes)]
        save_artifact(model, uri, names, name=f"seed-{size}-b{base_filters}")
    return uri


def write_images(folder: Path, count: int, height: int, width: int, seed: int = 0) -> Path:
    """Synthetic scenes saved as JPEG, the format most photo collections are in."""
    from unet_core.synthetic import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, _ = make_scene(rng, height, width)
        Image.fromarray(image).save(folder / f"img_{index:05d}.jpg", quality=90)
    return folder


def run_segment(*args: str) -> tuple[float, dict]:
    """Run jobs/segment.py as a user would; returns (wall seconds of the whole process, the run's
    record: its row of the output's `runs` Delta table, with `config` parsed)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "segment.py"), *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"segment.py failed:\n{done.stderr[-4000:]}")
    return wall, run_record(args[args.index("--output") + 1])


def run_record(output: str) -> dict:
    """The latest committed run's row of the `runs` table under `output`."""
    from jobs.output.readers import connect, read_run_record as latest_run

    record = latest_run(connect(output), None)
    if record is None:
        raise SystemExit(f"segment.py committed no run under {output}")
    return {**dataclasses.asdict(record), "config": json.loads(record.config)}


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
