"""Benchmark: Ray Data's own overhead, with a model that costs nearly nothing.

    python bench/job_overhead.py [--counts 2000:640x480 300:4032x3024] [--cpus-per-actor 1] [--actors 2]

The seed model hides the job's CPU side (on two cores it alone takes 90 ms per 512x512 image even at
base width 1), so here the model is one 1x1 convolution and a softmax at 512x512, saved as an
artifact like any other. The convolution is nothing; the replica's softmax, arg-max and confidence
over 21 classes at 512x512 still cost tens of milliseconds on one core, and count on both sides.

The reference is one process running the job's own stages in turn on batches of 8 (`prepare`, the
model, `finalize`, `write_parts` into a scratch root), per image, with no Ray at all: times the
machine's cores, the rate a scheduler with no overhead would reach with the same work. The job (`jobs/segment.py` as a
whole process, local Ray) runs on N and on 2N images; the difference is its steady state, free of
start-up. N images are hard links to a few distinct scenes, so making them costs little. Target:
the job's steady state at least 0.8 of the reference. The 2N run's own `runs` row says where its
time went: the replica's model seconds and the CPU stages' seconds per image, and its bound.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import print_table, run_segment, write_images

INPUT, CLASSES, DISTINCT, BATCH = 512, 21, 16, 8


def cheap_artifact(folder: Path) -> str:
    """One 1x1 convolution to 21 classes and a softmax."""
    import keras

    from unet_core import save_artifact
    from unet_core.masks import VOC_CLASS_NAMES

    keras.utils.set_random_seed(0)
    inputs = keras.Input((INPUT, INPUT, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(CLASSES, 1, activation="softmax")(inputs))
    uri = str(folder / "one-conv")
    save_artifact(model, uri, list(VOC_CLASS_NAMES), name="one-conv")
    return uri


def collection(folder: Path, count: int, width: int, height: int, scenes: Path) -> Path:
    """`count` images, hard links to the distinct scenes in turn."""
    folder.mkdir(parents=True)
    distinct = sorted(scenes.glob("*.jpg"))
    for index in range(count):
        os.link(distinct[index % len(distinct)], folder / f"img_{index:06d}.jpg")
    return folder


def one_process_seconds(artifact: str, folder: Path, work: Path) -> float:
    """Per image, the job's stages in turn in this process, batches of 8, no Ray."""
    from jobs.inference.model import model_info
    from jobs.inference.stages import finalize, prepare, signal_columns, write_parts
    from unet_core import load_artifact
    from unet_core.predict import Predictor

    model = model_info(artifact)
    predictor = Predictor(load_artifact(artifact), BATCH, "float32")
    paths = sorted(folder.glob("*.jpg"))
    output = str(work / "one-process")
    predictor.predict(np.zeros((BATCH, INPUT, INPUT, 3), np.uint8))  # traced before the clock starts
    started = time.perf_counter()
    for start in range(0, len(paths), BATCH):
        rows = paths[start : start + BATCH]
        batch = {
            "image_uri": np.array([str(p) for p in rows], dtype=object),
            "source_size": np.array([p.stat().st_size for p in rows], np.int64),
            "source_version": np.array(["1"] * len(rows), dtype=object),
            "source_modified": np.array([dt.datetime.now(dt.timezone.utc)] * len(rows), dtype=object),
        }
        prepared = prepare(batch, INPUT, 100_000_000, 1 << 30)
        clock = time.perf_counter()
        masks, confidence, signals = predictor.predict(prepared.pop("pixels"), prepared["box"])
        segmented = {
            **prepared,
            "mask": masks,
            "confidence": confidence.astype(np.float16),
            **signal_columns(signals),
            "replica": np.full(len(rows), "this process", dtype=object),
            "seconds_model": np.full(len(rows), (time.perf_counter() - clock) / len(rows)),
        }
        write_parts(finalize(segmented, model), output, "reference", model)
    return (time.perf_counter() - started) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", nargs="+", default=["2000:640x480", "300:4032x3024"], metavar="N:WxH")
    parser.add_argument(
        "--cpus-per-actor",
        help="the replica's CPUs (default: the job's own, the node's CPUs less 0.5 left for decoding)",
    )
    parser.add_argument("--actors", help="the replica pool's size (default: the job's own, auto)")
    parser.add_argument("--sample", type=int, default=64, help="images the one-process reference times")
    args = parser.parse_args()
    from unet_core.predict import configure_tensorflow

    configure_tensorflow(1)  # the reference is one core's work: before TensorFlow starts
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        artifact = cheap_artifact(work)
        rows = []
        for spec in args.counts:
            count, size = spec.split(":")
            count, (width, height) = int(count), map(int, size.split("x"))
            scenes = write_images(work / f"scenes-{size}", DISTINCT, height, width)
            per_image = one_process_seconds(
                artifact, collection(work / f"sample-{size}", args.sample, width, height, scenes), work
            )
            walls, records = {}, {}
            for n in (count, 2 * count):
                images = collection(work / f"in-{size}-{n}", n, width, height, scenes)
                walls[n], records[n] = run_segment(
                    "--input",
                    str(images),
                    "--output",
                    str(work / f"out-{size}-{n}"),
                    "--model",
                    artifact,
                    "--precision",
                    "float32",
                    "--quiet",
                    *(["--cpus-per-actor", args.cpus_per_actor] if args.cpus_per_actor else []),
                    *(["--actors", args.actors] if args.actors else []),
                )
            steady = walls[2 * count] - walls[count]
            ideal = cores / per_image
            record = records[2 * count]
            cpu_side = sum(record[f"{stage}_seconds"] for stage in ("read", "decode", "postprocess", "write"))
            rows.append(
                [
                    size,
                    count,
                    per_image * 1000,
                    ideal,
                    count / steady,
                    count / steady / ideal,
                    record["model_seconds"] / record["processed"] * 1000,
                    cpu_side / record["processed"] * 1000,
                    record["bound_by"],
                ]
            )
        print(
            f"one 1x1 convolution at {INPUT}x{INPUT}, {CLASSES} classes; {cores} cores; the replica holds "
            + (f"{args.cpus_per_actor} CPU" if args.cpus_per_actor else "the job's default CPUs (the node's less 0.5)")
        )
        print_table(
            [
                "images",
                "N",
                "one process ms/image",
                "x cores: images/s",
                "job steady images/s",
                "ratio",
                "job model ms/image",
                "job CPU side ms/image",
                "bound by",
            ],
            rows,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
