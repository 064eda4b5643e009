"""The training job against the loop a user writes first, at the same width and the same wall time.

    python bench/train_vs_keras.py [--epochs 200] [--base-filters 8]

ISBI 2012 membranes (../shared/data, see --data): slices 0-24 train, 25-29 are held out by both.

- job: `jobs/train.py` with its defaults (CE+Dice, Adam 1e-3 with cosine decay, global batch 8,
  augmentation, crops per image from the image's area, validation rhythm chosen on its own
  figures) on 256x256 patches, `--export last`, scored by `jobs/evaluate.py` in the artifact's tile
  mode. Its wall time, Ray's start included, is the budget.
- keras: one process, the same U-Net (`unet_core.build_unet`, same width) on whole 512x512 slices,
  `model.fit` with Adam (Keras' default rate) and sparse cross-entropy, batch 4, stopped when the
  budget (counted from before `import keras`) runs out, scored on the whole held-out slices.

Both are scored from one confusion matrix over the 5 held-out slices at full resolution. Not a test:
it needs the data set and takes twice the budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import print_table
from train_eval import ROOT, run, splits

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def run_job(
    data: dict, work: Path, epochs: int, base_filters: int, patch_size: int, extra: list[str]
) -> tuple[dict, float]:
    """Train with jobs/train.py and score with jobs/evaluate.py; the metrics and the training wall seconds."""
    name = f"job-{time.strftime('%Y%m%dT%H%M%S')}"
    model, evaluation = work / "models" / name, work / "eval" / name
    seconds = run(
        "train.py",
        "--images",
        str(data["train"][0]),
        "--masks",
        str(data["train"][1]),
        "--val-images",
        str(data["held_out"][0]),
        "--val-masks",
        str(data["held_out"][1]),
        "--num-classes",
        "2",
        "--class-names",
        "membrane,cell",
        "--mask-map",
        "255:1",
        "--patch-size",
        str(patch_size),
        "--base-filters",
        str(base_filters),
        "--epochs",
        str(epochs),
        "--export",
        "last",
        "--name",
        name,
        "--storage",
        str(work / "checkpoints"),
        "--output",
        str(model),
        *extra,
    )
    run(
        "evaluate.py",
        "--model",
        str(model),
        "--images",
        str(data["held_out"][0]),
        "--masks",
        str(data["held_out"][1]),
        "--output",
        str(evaluation),
        "--mask-map",
        "255:1",
        "--precision",
        "float32",
    )
    return json.loads((evaluation / "metrics.json").read_text()), seconds


def load(images: Path, masks: Path) -> tuple[np.ndarray, np.ndarray]:
    """What a user's loader does: RGB in [0, 1], the 0/255 label as classes 0 (membrane) and 1 (cell)."""
    names = sorted(p.name for p in images.iterdir())
    x = np.stack([np.asarray(Image.open(images / n).convert("RGB"), np.float32) / 255.0 for n in names])
    y = np.stack([(np.asarray(Image.open(masks / n).convert("L")) > 127).astype(np.int32) for n in names])
    return x, y


def run_keras(data: dict, budget: float, base_filters: int) -> tuple[np.ndarray, int, int, float]:
    """The plain loop, stopped at the budget; the held-out confusion matrix, epochs, steps and wall seconds."""
    started = time.time()
    import keras

    from unet_core.metrics import confusion_matrix
    from unet_core.model import build_unet

    x, y = load(*data["train"])
    model = build_unet(2, x.shape[1:], base_filters=base_filters)
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    deadline, steps = started + budget, []

    class StopAtDeadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None) -> None:
            steps.append(batch)
            self.model.stop_training = time.time() >= deadline

    history = model.fit(x, y, batch_size=4, epochs=1_000_000, callbacks=[StopAtDeadline()], verbose=0)
    seconds = time.time() - started
    held_x, held_y = load(*data["held_out"])
    predicted = model.predict(held_x, batch_size=1, verbose=0).argmax(-1)
    return confusion_matrix(held_y, predicted, 2), len(history.history["loss"]), len(steps), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="folder holding isbi2012-membrane/ (default: ../shared/data)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "bench-work", help="splits, checkpoints, models, metrics")
    parser.add_argument(
        "--epochs",
        type=int,
        default=200,
        help="the job's epochs, which set the budget "
        "(default 200: about 15 minutes on 2 cores "
        "with bfloat16 instructions)",
    )
    parser.add_argument("--base-filters", type=int, default=8, help="width of both models (default 8)")
    parser.add_argument("--patch-size", type=int, default=256, help="the job's crop side (default 256)")
    parser.add_argument("--keras-seconds", type=float, help="the plain loop's budget (default: the job's wall time)")
    args, extra = parser.parse_known_args()
    work = (args.work / "train_vs_keras").resolve()
    data = splits("isbi", args.data, work)
    job_metrics, budget = run_job(data, work, args.epochs, args.base_filters, args.patch_size, extra)
    keras_budget = budget if args.keras_seconds is None else args.keras_seconds
    print(f"keras: model.fit on whole slices for {keras_budget:.0f} s (the job took {budget:.0f} s)", flush=True)
    from unet_core.metrics import scores

    confusion, epochs, steps, keras_seconds = run_keras(data, keras_budget, args.base_filters)
    keras_scores = scores(confusion)
    print_table(
        ["arm", "wall s", "held-out pixel error", "membrane IoU", "cell IoU"],
        [
            [
                "jobs/train.py",
                budget,
                *figures(job_metrics["pixel_error"], job_metrics["iou"]["membrane"], job_metrics["iou"]["cell"]),
            ],
            [
                f"keras fit ({epochs} epochs, {steps} steps)",
                keras_seconds,
                *figures(1 - keras_scores.pixel_accuracy, *keras_scores.iou),
            ],
        ],
    )


def figures(*values: float) -> list[str]:
    return [f"{value:.4f}" for value in values]


if __name__ == "__main__":
    main()
