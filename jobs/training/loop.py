"""The worker side of jobs/train.py: what each Ray Train worker runs, and the checkpoint it reports.

Kept apart from the command line so that workers import only this (Ray Train pickles `train_worker`
by reference to its module) and so that the checkpoint format has one home: `export_artifact` in
jobs/train.py and a resumed run read what `report` writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from jobs.common.private_apis import quiet_ray_train_reports
from jobs.training import data as training_data

if TYPE_CHECKING:
    from jobs.training.config import TrainingPlan, TrainConfig, WorkerTask

STATE_FILE = "state.npz"
PROGRESS_FILE = "progress.json"
DATA_CPUS = 0.5
"""CPUs the batch readers reserve, all workers' together: a fraction, so reading never starves."""
PREFETCH_BATCHES = 4
"""Batches a worker has decoding ahead of its step: enough to hide a read's latency, few to bound memory."""
VALIDATION_BATCH = 8


def train_worker(loop_config: dict[str, WorkerTask]) -> None:
    """One data-parallel worker: MultiWorkerMirroredStrategy over Ray Train's TF_CONFIG."""
    import keras
    import ray.train
    import tensorflow as tf

    import unet_core.quiet_tensorflow  # noqa: F401  (before keras loads TensorFlow: see its docstring)
    from unet_core.precision import resolve_precision
    from unet_core.predict import configure_tensorflow
    from unet_core.training import DistributedTrainer, LossConfig, ModelConfig, OptimizerConfig

    task: WorkerTask = loop_config["task"]
    config, plan = task.config, task.plan
    configure_tensorflow(plan.threads)
    tf.get_logger().setLevel("ERROR")  # the strategy logs every collective it builds; keep the epoch lines readable
    quiet_ray_train_reports()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    total_steps = plan.steps_per_epoch * config.epochs
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    if rank == 0:
        say(f"training in {precision} on {world} workers")
    trainer = DistributedTrainer(
        strategy,
        ModelConfig(config.num_classes, config.input_size, config.base_filters, precision, config.normalization),
        LossConfig(config.loss, config.class_weights, config.ignore_index),
        OptimizerConfig(
            config.optimizer, config.learning_rate, config.schedule, round(config.warmup_epochs * plan.steps_per_epoch)
        ),
        config.batch_size,
        total_steps,
    )
    progress = restore_or_start(trainer, plan, rank, task.backbone)
    reader = start_reader(world)
    warned, told_collapse, every, warm = False, False, config.validate_every, progress.epoch + 2
    first_loss = None
    validation_seconds = 0.0
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        started = time.time()
        loss, waited = train_epoch(trainer, epoch_batches(reader, task.train_pairs, plan, config, epoch, rank, world))
        first_loss = loss if first_loss is None else first_loss
        validating = time.time()
        confusion = None
        if validates(epoch, every, config.epochs):
            confusion = validation_confusion(
                trainer, validation_batches(reader, task.val_pairs, config, rank, world), config
            )
            confusion = trainer.all_reduce_sum(confusion)
        timing = {
            "epoch_seconds": time.time() - started,
            "validation_seconds": time.time() - validating,
            "data_wait_seconds": waited,
        }
        if confusion is not None:
            validation_seconds = timing["validation_seconds"]
        if every is None and epoch == warm:  # warm figures (the first epoch starts up), the same on every worker
            train_seconds, validation_seconds = (
                trainer.all_reduce_sum(np.array([validating - started, validation_seconds])) / world
            )
            every = validation_rhythm(train_seconds, validation_seconds)
            if rank == 0:
                say(
                    f"validation took {validation_seconds:.1f} s against {train_seconds:.1f} s of training in "
                    f"epoch {epoch}: validating every {every} epochs and the last (--validate-every N sets it)"
                )
        # the confusion is summed over the ranks: every rank reaches the same verdict
        collapse = None if confusion is None else collapsed(confusion, config, epoch, first_loss, loss)
        metrics = {
            **epoch_metrics(epoch, loss, confusion, trainer.step, timing, config.ignore_index),
            "collapsed_to": collapsed_class(confusion, config) if collapse else None,
        }
        if rank == 0:
            say(format_epoch(metrics, config))
            warning = None if confusion is None else not_learning(confusion, config, epoch)
            if collapse and not told_collapse:
                say(collapse)
                told_collapse = warned = True
            if warning and not warned:
                say(warning)
                warned = True
            if epoch == warm and epoch < config.epochs:
                say(estimate(epoch, config.epochs, every, validating - started, validation_seconds))
        report(trainer, metrics, rank, plan)
        if collapse and config.stop_on_collapse:
            return


VALIDATION_SHARE = 0.1
"""Of the wall time, what validation may take by default."""


def validates(epoch: int, every: int | None, epochs: int) -> bool:
    """Whether this epoch is validated: every `every`-th and the last; the attempt's first two epochs
    when the rhythm is still to be chosen (`every` None: it is measured)."""
    return every is None or epoch == epochs or epoch % every == 0


def validation_rhythm(train_seconds: float, validation_seconds: float) -> int:
    """The fewest epochs between validations that keep validation under VALIDATION_SHARE of the run:
    V / (N T + V) <= share."""
    if train_seconds <= 0:
        return 1
    return max(1, math.ceil(validation_seconds * (1 / VALIDATION_SHARE - 1) / train_seconds))


def estimate(epoch: int, epochs: int, every: int, train_seconds: float, validation_seconds: float) -> str:
    """The rest of the run from a warm epoch's figures: the first epoch's start-up (tracing the step,
    starting the reader) made an estimate from it about 2.5 times too long on ISBI."""
    left = epochs - epoch
    validations = sum(validates(e, every, epochs) for e in range(epoch + 1, epochs + 1))
    minutes = math.ceil((left * train_seconds + validations * validation_seconds) / 60)
    validation = f"validation {validation_seconds:.1f} s" if validation_seconds else "validation not yet timed"
    return (
        f"an epoch trains in {train_seconds:.1f} s here ({validation}): the {left} left ({validations} "
        f"validated), about {minutes} min"
    )


@dataclass(frozen=True)
class Progress:
    """Where a checkpoint left the run: the two facts a resumed attempt acts on, out of the checkpoint's
    PROGRESS_FILE, which `report` writes as the epoch's metrics plus the data fingerprint (the rest is
    for a person reading the checkpoint)."""

    epoch: int
    """The last epoch trained; 0 before the first."""
    fingerprint: str
    """Of the training pairs the epochs were trained on (`training_data.fingerprint`)."""

    @classmethod
    def read(cls, folder: str) -> Progress:
        with open(os.path.join(folder, PROGRESS_FILE)) as handle:
            written = json.load(handle)
        return cls(written["epoch"], written["fingerprint"])


def restore_or_start(trainer, plan: TrainingPlan, rank: int, backbone: dict[str, list[np.ndarray]] | None) -> Progress:
    """Load the latest checkpoint when this run name has one; otherwise start at epoch 0, from the
    backbone's encoder weights where given."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        for name, weights in (backbone or {}).items():
            trainer.model.get_layer(name).set_weights(weights)
        return Progress(0, plan.fingerprint)
    with checkpoint.as_directory() as folder:
        with np.load(os.path.join(folder, STATE_FILE)) as arrays:
            trainer.restore(dict(arrays))
        progress = Progress.read(folder)
    if rank == 0:
        say(f"resuming after epoch {progress.epoch} (optimizer step {trainer.step})")
        if progress.fingerprint != plan.fingerprint:
            say("warning: the training data differ from those the checkpoint was trained on")
    return progress


def say(line: str) -> None:
    """Print a line from a training worker once. Ray Train swaps its workers' `print` for one that logs
    the line through the root logger (to stderr) and, as Ray gives each worker its own sys.stdout,
    prints it there too: the job's output showed every line twice."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


class BatchReader:
    """Builds this worker's batches in a process of its own, a few ahead of the step.

    An actor rather than a Ray task per batch: where the step keeps the cores busy, Ray ends task
    workers idle for a second, so nearly every batch started a new Python process (interpreter and
    imports, about 3 s of CPU on a 2-core node) on the cores the step needed. Threaded, so a slow
    read from object storage does not hold up the batches queued behind it.
    """

    def build(self, function, *args, **kwargs):
        return function(*args, **kwargs)


def start_reader(world: int):
    """This worker's BatchReader. Ray's default scheduling places it on the worker's own node where that
    has room, else elsewhere; node affinity would be wrong here: even "soft", it waits for a node that
    holds the CPUs but has none free (a GPU node whose CPU the worker holds) instead of moving on."""
    import ray

    return ray.remote(BatchReader).options(num_cpus=DATA_CPUS / world, max_concurrency=PREFETCH_BATCHES).remote()


def epoch_batches(
    reader, pairs, plan: TrainingPlan, config: TrainConfig, epoch: int, rank: int, world: int
) -> Iterator[dict]:
    """This worker's batches of the epoch in `training_data.epoch_order`, decoded and augmented by its
    reader a few batches ahead. Not Ray Data's split: it streams the pairs in one order every epoch, to
    whichever worker asks first, so no seed could give each epoch its own order, the same on a rerun."""
    order = training_data.epoch_samples(np.array(plan.crops), config.seed, epoch)
    share = training_data.worker_share(order, rank, world, plan.steps_per_epoch * plan.worker_batch)
    options = {
        "input_size": config.input_size,
        "lookup": training_data.parse_mask_map(config.mask_map),
        "patch_size": config.patch_size,
        "augment": config.augment,
        "ignore_index": config.ignore_index,
        "max_pixels": config.max_pixels,
        "max_bytes": config.max_bytes,
    }
    return read_ahead(
        reader.build.remote(
            training_data.training_batch,
            pairs.take(share[start : start + plan.worker_batch]).to_pydict(),
            seed=[config.seed, epoch, rank, start],
            **options,
        )
        for start in range(0, len(share), plan.worker_batch)
    )


def validation_batches(reader, pairs, config: TrainConfig, rank: int, world: int) -> Iterator[dict]:
    """This worker's share of the validation pairs (every world-th), letterboxed to the model input or,
    for a model trained on patches, whole at full resolution."""
    mine = np.arange(rank, len(pairs), world)
    lookup = training_data.parse_mask_map(config.mask_map)
    limits = {"max_pixels": config.max_pixels, "max_bytes": config.max_bytes}
    load = (
        partial(training_data.load_full_pairs, lookup=lookup)
        if config.patch_size
        else partial(training_data.load_pairs, input_size=config.input_size, lookup=lookup)
    )
    return read_ahead(
        reader.build.remote(load, pairs.take(mine[i : i + VALIDATION_BATCH]).to_pydict(), **limits)
        for i in range(0, len(mine), VALIDATION_BATCH)
    )


def read_ahead(requests: Iterator) -> Iterator:
    """The requests' results in order, with up to PREFETCH_BATCHES more submitted ahead of the one used."""
    import ray

    pending = deque()
    for request in requests:
        pending.append(request)
        if len(pending) > PREFETCH_BATCHES:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


def train_epoch(trainer, batches: Iterator[dict]) -> tuple[float, float]:
    """Mean loss of the epoch's steps, and the seconds the steps waited for their batches."""
    losses, waited = [], 0.0
    while True:
        started = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - started
        if batch is None:
            return float(np.mean(losses)), waited
        losses.append(trainer.train_step(batch["image"], batch["mask"]))


def validation_confusion(trainer, batches: Iterator[dict], config: TrainConfig) -> np.ndarray:
    """Confusion matrix of this worker's validation share, predicted the way the artifact will run:
    whole letterboxed inputs, or sliding tiles at full resolution for a model trained on patches."""
    from unet_core.metrics import confusion_matrix
    from unet_core.tiling import sliding_window

    confusion = np.zeros((config.num_classes, config.num_classes), np.int64)
    for batch in batches:
        if not config.patch_size:
            predicted = trainer.predict(batch["image"])
            confusion += confusion_matrix(batch["mask"], predicted, config.num_classes, config.ignore_index)
            continue
        for image, mask in zip(batch["image"], batch["mask"]):
            predicted = sliding_window(image, trainer.probabilities, config.input_size, config.num_classes).mask
            confusion += confusion_matrix(mask, predicted, config.num_classes, config.ignore_index)
    return confusion


def epoch_metrics(
    epoch: int, loss: float, confusion: np.ndarray | None, step: int, timing: dict[str, float], ignore_index: int | None
) -> dict:
    """An epoch's metrics; an epoch not validated scores NaN, which Ray Train ranks below every
    validated checkpoint (it still keeps the latest, which a restart resumes from)."""
    from unet_core.metrics import scores

    common = {
        "epoch": epoch,
        "train_loss": loss,
        "optimizer_step": step,
        **{k: round(v, 2) for k, v in timing.items()},
        "validated": confusion is not None,
    }
    if confusion is None:
        return {**common, "val_miou": math.nan, "val_pixel_accuracy": math.nan, "val_iou": None, "val_confusion": None}
    scored = scores(confusion, ignore_index)
    return {
        **common,
        "val_miou": scored.mean_iou,
        "val_pixel_accuracy": scored.pixel_accuracy,
        "val_iou": [None if np.isnan(v) else float(v) for v in scored.iou],
        "val_confusion": confusion.astype(np.int64).tolist(),
    }


NOT_LEARNING_SHARE = 1 / 3
"""From this share of the run on (and never on its first epoch), a class still at IoU 0 is named."""


def not_learning(confusion: np.ndarray, config: TrainConfig, epoch: int) -> str | None:
    """One line naming the classes present in the validation truth that the model still never gets
    right after a share of the run, with the usual causes; None while it is early or all learn."""
    from unet_core.metrics import unlearnt_classes

    if epoch < max(2, NOT_LEARNING_SHARE * config.epochs):
        return None
    stuck = [config.class_names[c] for c in unlearnt_classes(np.asarray(confusion))]
    if not stuck:
        return None
    return (
        f"warning: {', '.join(stuck)} still at IoU 0 on the validation set at epoch {epoch}/{config.epochs} "
        "though present in its masks. Usual causes: too few steps (--epochs, --patches-per-image), a "
        "--mask-map that maps the class away in training, or a class too rare for the loss "
        "(--class-weights)"
    )


def collapsed(confusion: np.ndarray, config: TrainConfig, epoch: int, first_loss: float, loss: float) -> str | None:
    """One line when, from a share of the run on, the model finds no validation pixel of any class
    but one though the validation truth holds more: it has collapsed, and more epochs rarely bring it
    back; None otherwise."""
    only = collapsed_class(confusion, config)
    if epoch < max(2, NOT_LEARNING_SHARE * config.epochs) or only is None:
        return None
    then = "" if config.stop_on_collapse else "; --stop-on-collapse ends such a run with status 5"
    return (
        f"warning: training collapsed: no validation pixel of any class but {only} is found at epoch {epoch}/"
        f"{config.epochs} (train loss {first_loss:.4f} as this attempt began, {loss:.4f} now). {COLLAPSE_CAUSES}"
        f"{then}"
    )


COLLAPSE_CAUSES = (
    "Likely causes: a model without normalization trained from scratch on sparse foreground, a "
    "learning rate too high. Change --normalization group first (docs/training.md measures it), "
    "then --learning-rate (lower) or --warmup-epochs, --loss ce+dice, --class-weights, or "
    "--patches-per-image"
)


def collapsed_class(confusion: np.ndarray, config: TrainConfig) -> str | None:
    """The name of the one class the model finds, if it has collapsed to one."""
    from unet_core.metrics import collapsed_to

    only = collapsed_to(np.asarray(confusion))
    return None if only is None else config.class_names[only]


def format_epoch(metrics: dict, config: TrainConfig) -> str:
    done = f"epoch {metrics['epoch']}/{config.epochs}: loss {metrics['train_loss']:.4f}, "
    timing = (
        f"step {metrics['optimizer_step']}, {metrics['epoch_seconds']:.2f} s (validation "
        f"{metrics['validation_seconds']:.2f} s, steps waiting for data {metrics['data_wait_seconds']:.2f} s)"
    )
    if not metrics["validated"]:
        return f"{done}not validated, {timing}"
    ious = ", ".join(
        f"{name} {'-' if v is None else f'{v:.3f}'}" for name, v in zip(config.class_names, metrics["val_iou"])
    )
    return (
        f"{done}val mIoU {metrics['val_miou']:.4f}, pixel accuracy {metrics['val_pixel_accuracy']:.4f} "
        f"[{ious}] {timing}"
    )


def report(trainer, metrics: dict, rank: int, plan: TrainingPlan) -> None:
    """Every rank reports; rank 0's checkpoint holds the state, every rank adds its weights' digest
    (Ray merges the ranks' files into one checkpoint folder), which proves the replicas agree."""
    import ray.train

    from unet_core.training import weights_digest

    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            np.savez(os.path.join(folder, STATE_FILE), **trainer.state())
            with open(os.path.join(folder, PROGRESS_FILE), "w") as handle:
                json.dump({**metrics, "fingerprint": plan.fingerprint}, handle)
        with open(os.path.join(folder, f"replica-{rank}.sha256"), "w") as handle:
            handle.write(weights_digest(trainer.model))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
