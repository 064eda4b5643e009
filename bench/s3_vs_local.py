"""Wall time of the same segmentation run with storage on S3 versus on local disk, side by side.

Starts a SeaweedFS S3 server on loopback (the one the tests use; needs the test extra), writes the
same N small JPEG scenes and model artifact to both places, then runs `jobs/segment.py` as a user
would, alternating local -> local and s3 -> s3, and prints each run's wall time (whole process,
and the pipeline alone as the manifest records it) and the ratio of the medians.

    python bench/s3_vs_local.py [--images 200] [--repeats 2] [--size 96]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from s3_server import seaweedfs  # noqa: E402
from unet_core import build_unet, save_artifact  # noqa: E402
from unet_core.synthetic import SCENE_CLASSES, make_scene  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="how many images (default 200)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind, alternated (default 2)")
    parser.add_argument("--base-filters", type=int, default=8, help="model width (default 8; 64 is the seed)")
    return parser.parse_args()


def write_inputs(root: Path, count: int, size: int, base_filters: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for index in range(count):
        image, _ = make_scene(rng, size, size)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        (root / "images" / f"scene-{index:05d}.jpg").write_bytes(buffer.getvalue())
    model = build_unet(len(SCENE_CLASSES), (64, 64, 3), base_filters=base_filters)
    save_artifact(model, str(root / "model"), list(SCENE_CLASSES), name="bench")


def run_segment(inputs: str, output: str, model: str, run_id: str, env: dict) -> tuple[float, float]:
    """(process wall seconds, pipeline wall seconds from the manifest)."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "segment.py"),
            "--input",
            inputs,
            "--output",
            output,
            "--model",
            model,
            "--run-id",
            run_id,
            "--batch-size",
            "8",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{run_id} failed:\n{done.stderr[-3000:]}")
    line = next(text for text in done.stdout.splitlines() if text.startswith("run ") and "images/s" in text)
    return wall, float(line.split(" in ")[1].split(" s ")[0])


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="s3-vs-local-") as tmp:
        local = Path(tmp) / "local"
        write_inputs(local, args.images, args.size, args.base_filters)
        with seaweedfs(Path(tmp) / "seaweedfs") as server:
            fs = server.filesystem()
            fs.mkdir("bench")
            fs.put(str(local / "images") + "/", "bench/images/", recursive=True)
            fs.put(str(local / "model") + "/", "bench/model/", recursive=True)
            s3_env = server.env()
            local_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            results: dict[str, list[tuple[float, float]]] = {"local -> local": [], "s3 -> s3": []}
            for repeat in range(args.repeats):
                results["local -> local"].append(
                    run_segment(
                        str(local / "images"), str(local / "out"), str(local / "model"), f"local-{repeat}", local_env
                    )
                )
                results["s3 -> s3"].append(
                    run_segment("s3://bench/images/", "s3://bench/out", "s3://bench/model", f"s3-{repeat}", s3_env)
                )
    print(
        f"{args.images} JPEG images of {args.size}x{args.size}, model base_filters={args.base_filters}, "
        f"{args.repeats} alternated runs each"
    )
    medians = {}
    for kind, runs in results.items():
        medians[kind] = statistics.median(w for w, _ in runs), statistics.median(p for _, p in runs)
        print(
            f"{kind:15} process wall s: {', '.join(f'{w:.1f}' for w, _ in runs):20} "
            f"pipeline s: {', '.join(f'{p:.1f}' for _, p in runs)}"
        )
    ratio_wall = medians["s3 -> s3"][0] / medians["local -> local"][0]
    ratio_pipe = medians["s3 -> s3"][1] / medians["local -> local"][1]
    print(
        json.dumps({"s3_over_local_process_wall": round(ratio_wall, 3), "s3_over_local_pipeline": round(ratio_pipe, 3)})
    )


if __name__ == "__main__":
    main()
