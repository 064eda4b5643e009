"""Benchmark: peak memory of one model replica in tile mode, against the image's area and width.

    python bench/tile_memory.py [--shapes 5000x5000 2500x10000 10000x10000] [--size 256] [--base-filters 4]

Each image runs in a fresh process, which loads the model, runs one full batch of tiles (so that
TensorFlow's own buffers are in the baseline), takes its peak RSS (ru_maxrss) as the baseline, then
does what a replica does with one image in tile mode: holds the decoded RGB image (as it arrives in
the block), runs `sliding_window` and converts the confidence to float16 (`Segmenter._tiled`). The
growth of the peak over the baseline, per pixel, is the replica's cost of one image. Two shapes of
one area and two of one width separate what grows with the area from what grows with the width.

The model is the seed architecture, narrow (base width 4, 21 classes) so that 100 megapixels of tiles
run in about a minute on two cores; the memory measured does not depend on the width, only on the
tile size and the number of classes (the blending band holds tile x width x classes floats).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import print_table, seed_artifact

CLASSES = 21
BATCH = 8


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(artifact: str, height: int, width: int, overlap: float) -> dict:
    """One image through the replica's tile path, in this process; the peak growth and seconds."""
    from unet_core import load_artifact
    from unet_core.predict import Predictor
    from unet_core.tiling import sliding_window

    predictor = Predictor(load_artifact(artifact), BATCH, precision="float32")
    tile = predictor.input_size
    warm = np.zeros((tile, tile * BATCH, 3), np.uint8)
    sliding_window(warm, predictor.probabilities, tile, predictor.num_classes, 0.0)
    baseline = peak_bytes()
    started = time.perf_counter()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask, confidence, _ = sliding_window(image, predictor.probabilities, tile, predictor.num_classes, overlap)
    confidence = confidence.astype(np.float16)
    seconds = time.perf_counter() - started
    assert mask.shape == confidence.shape == (height, width)
    return {"growth": peak_bytes() - baseline, "seconds": seconds}


def run_one(artifact: str, shape: str, overlap: float) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", shape, "--artifact", artifact, "--overlap", str(overlap)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{shape} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["5000x5000", "2500x10000", "10000x10000"], metavar="HxW")
    parser.add_argument("--size", type=int, default=256, help="model input, the tile side (default 256)")
    parser.add_argument("--base-filters", type=int, default=4)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--measure", metavar="HxW", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        height, width = (int(v) for v in args.measure.split("x"))
        print(json.dumps(measure(args.artifact, height, width, args.overlap)))
        return
    artifact = seed_artifact(Path(tempfile.mkdtemp(prefix="bench-tile-")), args.size, args.base_filters, CLASSES)
    rows = []
    for shape in args.shapes:
        height, width = (int(v) for v in shape.split("x"))
        result = run_one(artifact, shape, args.overlap)
        rows.append(
            [
                shape,
                height * width / 1e6,
                result["growth"] / 2**20,
                result["growth"] / (height * width),
                result["seconds"],
            ]
        )
    print(
        f"tile mode, one replica: seed U-Net {args.size}x{args.size} base {args.base_filters}, {CLASSES} classes, "
        f"batch {BATCH}, overlap {args.overlap:g}, float32"
    )
    print_table(["image HxW", "megapixels", "peak growth MiB", "bytes per pixel", "seconds"], rows)


if __name__ == "__main__":
    main()
