"""Training throughput: jobs/train.py against a bare one-process training step, side by side.

    python bench/train_throughput.py [--size 512] [--base-filters 8] [--batch-size 4] [--workers 1 2]

The bare step is what a user would write: one process, the same model, precision, loss (CE+Dice),
optimizer and batch, a `tf.function` step on one batch already in memory, no data feed at all. The
job reads, decodes and augments its PNG pairs in a reader actor per worker, synchronises gradients through
MultiWorkerMirroredStrategy and validates every epoch. Its training rate counts the steps of the epochs
after the first (tracing) and their wait for data; validation is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, print_table

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: .* ([\d.]+) s \(validation ([\d.]+) s, steps waiting for data ([\d.]+) s\)")

BARE_STEP = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import unet_core.quiet_tensorflow
import keras, numpy as np, tensorflow as tf
from unet_core.losses import segmentation_loss
from unet_core.model import build_unet
from unet_core.precision import model_in_precision, resolve_precision

size, width, batch, steps, classes = {size}, {width}, {batch}, {steps}, 4
precision = resolve_precision({precision!r})
keras.utils.set_random_seed(0)
model = model_in_precision(build_unet(classes, (size, size, 3), width), precision)
optimizer = keras.optimizers.Adam(1e-3)
if precision == "float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
loss_of = segmentation_loss("ce+dice", classes)
rng = np.random.default_rng(0)
images = tf.constant(rng.random((batch, size, size, 3), np.float32))
masks = tf.constant(rng.integers(0, classes, (batch, size, size)).astype(np.uint8))

@tf.function
def step(images, masks):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_of(masks, model(images, training=True)))
        scaled = optimizer.scale_loss(loss)
    optimizer.apply_gradients(zip(tape.gradient(scaled, model.trainable_variables), model.trainable_variables))
    return loss

for _ in range(2):
    step(images, masks).numpy()
started = time.perf_counter()
for _ in range(steps):
    step(images, masks).numpy()
print(json.dumps({{"precision": precision, "images_per_second": steps * batch / (time.perf_counter() - started)}}))
"""


def write_pairs(folder: Path, count: int, size: int, seed: int) -> tuple[str, str]:
    from unet_core.synthetic import make_scene

    rng = np.random.default_rng(seed)
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
    for index in range(count):
        image, mask = make_scene(rng, size, size)
        Image.fromarray(image).save(folder / "images" / f"{index:04d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{index:04d}.png")
    return str(folder / "images"), str(folder / "masks")


def bare_step(args: argparse.Namespace, steps: int) -> dict:
    code = BARE_STEP.format(
        root=str(ROOT),
        size=args.size,
        width=args.base_filters,
        batch=args.batch_size,
        steps=steps,
        precision=args.precision,
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def job(args: argparse.Namespace, workers: int, data: dict, work: Path) -> dict:
    """train.py as a user runs it; rates from its epoch lines after the first."""
    command = [
        sys.executable,
        str(ROOT / "jobs" / "train.py"),
        "--images",
        data["train"][0],
        "--masks",
        data["train"][1],
        "--val-images",
        data["val"][0],
        "--val-masks",
        data["val"][1],
        "--num-classes",
        "4",
        "--input-size",
        str(args.size),
        "--base-filters",
        str(args.base_filters),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--workers",
        str(workers),
        "--precision",
        args.precision,
        "--storage",
        str(work / "checkpoints"),
        "--name",
        f"throughput-{workers}",
        "--output",
        str(work / f"model-{workers}"),
        "--validate-every",
        "1",
    ]  # every epoch: its validation time is part of what is measured
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"train.py failed:\n{done.stderr[-4000:]}")
    epochs = [tuple(float(v) for v in match.groups()) for match in EPOCH_LINE.finditer(done.stdout)]
    timed = [epoch for epoch in epochs if epoch[0] > 1]
    steps = args.images // args.batch_size
    training = sum(seconds - validation for _, seconds, validation, _ in timed)
    return {
        "workers": workers,
        "precision": re.search(r"training in (\w+)", done.stdout).group(1),
        "images_per_second": steps * args.batch_size * len(timed) / training,
        "with_validation": steps * args.batch_size * len(timed) / sum(e[1] for e in timed),
        "validation_share": sum(e[2] for e in timed) / sum(e[1] for e in timed),
        "data_wait_share": sum(e[3] for e in timed) / training,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=32, help="training pairs (one epoch)")
    parser.add_argument("--val-images", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = {
        "train": write_pairs(work / "train", args.images, args.size, 0),
        "val": write_pairs(work / "val", args.val_images, args.size, 1),
    }
    bare = bare_step(args, steps=max(4, args.images // args.batch_size))
    runs = [job(args, workers, data, work) for workers in args.workers]
    after = bare_step(args, steps=max(4, args.images // args.batch_size))
    reference = (bare["images_per_second"] + after["images_per_second"]) / 2
    print(
        f"size {args.size}, width {args.base_filters}, global batch {args.batch_size}, precision "
        f"{bare['precision']}; bare step {bare['images_per_second']:.2f} images/s before the jobs, "
        f"{after['images_per_second']:.2f} after (mean used)"
    )
    rows = [["bare step", 1, bare["precision"], reference, 1.0, "-", "-", "-", "-"]]
    rows += [
        [
            f"train.py, {run['workers']} worker(s)",
            run["workers"],
            run["precision"],
            run["images_per_second"],
            run["images_per_second"] / reference,
            run["with_validation"] / reference,
            f"{run['data_wait_share']:.1%}",
            f"{1 - run['images_per_second'] / reference - run['data_wait_share']:.1%}",
            f"{run['validation_share']:.1%}",
        ]
        for run in runs
    ]
    print_table(
        [
            "what",
            "processes",
            "precision",
            "images/s",
            "ratio",
            "ratio incl. validation",
            "waiting for data",
            "collectives and the rest",
            "epoch in validation",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
