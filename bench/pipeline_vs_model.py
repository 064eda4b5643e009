"""Benchmark 2: the whole segment.py job against the bare model on the same images.

    python bench/pipeline_vs_model.py [--count 24] [--size 512] [--precision auto] [--batch-size 8] [--gpus-per-actor 1]

The job reads JPEGs from disk, decodes, letterboxes, predicts, maps masks back, encodes PNGs,
counts classes and writes Parquet; the bare model only runs the forward pass on the same images,
already decoded and letterboxed in memory, with the same batch size and precision, as the replica
runs it (with the per-image quality signals) and, timed in turn with it, without the signals. The job runs
on N and 2N images: the difference is its steady-state cost of N images, free of the fixed start-up
(Ray, replica start, tracing) that a million-image run pays once.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import median_time, print_table, run_segment, seed_artifact, write_images

import numpy as np  # noqa: E402


def bare_model_seconds(artifact: str, folder: Path, precision: str, batch: int, repeats: int) -> tuple[float, float]:
    """Seconds for the forward passes alone over every image of the folder, as the replica runs them
    (masks, confidences and the quality signals) and without the signals (masks and confidences
    only, the graph before them), timed in turn `repeats` times; the medians."""
    import tensorflow as tf

    from unet_core import decode_image, letterbox, load_artifact
    from unet_core.predict import Predictor

    predictor = Predictor(load_artifact(artifact), batch, precision)
    images = np.stack(
        [letterbox(decode_image(p.read_bytes()), predictor.input_size)[0] for p in sorted(folder.glob("*.jpg"))]
    )

    @tf.function(input_signature=[tf.TensorSpec([batch, *images.shape[1:]], tf.uint8)])
    def without_signals(chunk):
        probabilities, _ = predictor._passes(chunk)  # the replica's own passes, less the signals' reductions
        return tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8), tf.reduce_max(probabilities, axis=-1)

    predictor.predict(images[:batch])
    predictor._batched(without_signals, images[:batch])
    timed = [
        (
            median_time(lambda: predictor.predict(images), 1),
            median_time(lambda: predictor._batched(without_signals, images), 1),
        )
        for _ in range(repeats)
    ]
    return float(np.median([t[0] for t in timed])), float(np.median([t[1] for t in timed]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=24, help="N (the job also runs on 2N)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--base-filters", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="as segment.py's flag (default 0: CPU)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    artifact = seed_artifact(work, args.size, args.base_filters)
    small = write_images(work / "n", args.count, 480, 640, seed=1)
    large = write_images(work / "2n", 2 * args.count, 480, 640, seed=2)
    flags = [
        "--model",
        artifact,
        "--precision",
        args.precision,
        "--batch-size",
        str(args.batch_size),
        "--gpus-per-actor",
        str(args.gpus_per_actor),
    ]
    bare, unsignalled = bare_model_seconds(artifact, small, args.precision, args.batch_size, args.repeats)
    wall_n, manifest_n = run_segment("--input", str(small), "--output", str(work / "out-n"), *flags)
    wall_2n, _ = run_segment("--input", str(large), "--output", str(work / "out-2n"), *flags)
    steady = wall_2n - wall_n
    rows = [
        ["bare model forward", args.count, bare, args.count / bare, 1.0],
        [
            "bare model forward, without the quality signals",
            args.count,
            unsignalled,
            args.count / unsignalled,
            bare / unsignalled,
        ],
        ["job, end to end (N)", args.count, wall_n, args.count / wall_n, bare / wall_n],
        ["job, steady state (2N - N)", args.count, steady, args.count / steady, bare / steady],
    ]
    print(
        f"seed U-Net {args.size}x{args.size} base {args.base_filters}, precision {args.precision}, "
        f"batch {args.batch_size}, {manifest_n['config']['cpus_per_actor'] or 'auto'} CPUs per replica; "
        "images 640x480 JPEG"
    )
    print_table(["what", "images", "seconds", "images/s", "efficiency"], rows)
    print(
        f"the quality signals add {100 * (bare / unsignalled - 1):+.1f}% to the bare model's time "
        f"(median of {args.repeats} turns each)"
    )


if __name__ == "__main__":
    main()
