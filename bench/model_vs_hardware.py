"""Benchmark 1: the seed model's forward throughput per precision, next to the machine's matmul peak.

    python bench/model_vs_hardware.py [--sizes 512 256] [--repeats 3] [--base-filters 64] [--matmul-sides 2048 4096]

The peak is a large matmul in the same precision, measured in the same run: the fraction of peak
says how much of what this machine can do the U-Net actually gets.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import gflop_per_image, median_time, print_table, seed_artifact

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def matmul_peak(dtype: tf.DType, sides: tuple[int, ...] = (2048, 4096), repeats: int = 3) -> float:
    """GFLOP/s of the fastest square matmul tried: the practical peak of the machine in this precision."""
    return max(_matmul_rate(dtype, n, repeats) for n in sides)


def _matmul_rate(dtype: tf.DType, n: int, repeats: int) -> float:
    a = tf.random.uniform((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    step = tf.function(lambda: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32)))
    step()
    return 2 * n**3 / median_time(lambda: step().numpy(), repeats) / 1e9


def model_throughput(artifact: str, precision: str, batch: int, repeats: int) -> float:
    from unet_core import load_artifact
    from unet_core.predict import Predictor

    predictor = Predictor(load_artifact(artifact), batch, precision)
    images = np.random.default_rng(0).integers(0, 255, (batch, predictor.input_size, predictor.input_size, 3), np.uint8)
    predictor.predict(images)  # trace and warm up
    return batch / median_time(lambda: predictor.predict(images), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-filters", type=int, default=64, help="model width (default 64, the seed)")
    parser.add_argument(
        "--matmul-sides",
        type=int,
        nargs="+",
        default=[2048, 4096],
        help="square matmuls tried for the peak (default 2048 4096)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-model-"))
    rows = []
    for precision in args.precisions:
        peak = matmul_peak(tf.as_dtype(precision), tuple(args.matmul_sides))
        for size in args.sizes:
            rate = model_throughput(seed_artifact(work, size, args.base_filters), precision, args.batch, args.repeats)
            achieved = rate * gflop_per_image(size, args.base_filters)
            rows.append([precision, f"{size}x{size}", rate, achieved, peak, achieved / peak])
    print(
        f"seed U-Net base {args.base_filters} forward (batch {args.batch}, median of {args.repeats}) vs the best of "
        f"{' and '.join(f'{n}^2' for n in args.matmul_sides)} matmuls, "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads"
    )
    print_table(["precision", "input", "images/s", "GFLOP/s", "peak GFLOP/s", "of peak"], rows)


if __name__ == "__main__":
    main()
