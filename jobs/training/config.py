"""What a training run is asked to do (TrainConfig), what its workers agree on (TrainingPlan), what each
worker starts from (WorkerTask), and what an evaluation is asked to do (EvaluateConfig: the segment
job's replicas, scored against masks)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.common.errors import UserError
from jobs.inference.config import ReplicaConfig
from jobs.storage.files import DEFAULT_MAX_BYTES
from unet_core.image import DEFAULT_MAX_PIXELS
from unet_core.masks import VOC_CLASS_NAMES

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


@dataclass(frozen=True)
class TrainConfig:
    output: str
    num_classes: int
    images: str | None = None
    masks: str | None = None
    voc: str | None = None
    val_images: str | None = None
    val_masks: str | None = None
    val_fraction: float = 0.2
    mask_map: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    ignore_index: int | None = None
    class_names: tuple[str, ...] | None = None
    input_size: int | None = None
    """Square model input side; None: 256, or patch_size (filled in by `checked`)."""
    patch_size: int | None = None
    patches_per_image: int | None = None
    """With patch_size: crops of each image per epoch; None: its area in patches (`crops_per_image`)."""
    base_filters: int = 64
    normalization: str = "none"
    backbone_weights: str | None = None
    epochs: int = 20
    validate_every: int | None = None
    """Epochs between validations (and the last always); None: chosen from the second epoch's timings."""
    batch_size: int = 8
    loss: str = "ce+dice"
    class_weights: tuple[float, ...] | None = None
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    stop_on_collapse: bool = False
    augment: bool = True
    precision: str = "auto"
    seed: int = 0
    export: str = "best"
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    name: str | None = None
    storage: str | None = None
    address: str | None = None
    wait_for_nodes: float = 300.0
    verbosity: str = "normal"
    log_level: str | None = None
    s3_endpoint_url: str | None = None
    anonymous: bool = False

    def checked(self) -> TrainConfig:
        """Settings that contradict each other, refused before anything starts; the defaults they leave
        filled in. Held here, not in the command, so that a library caller gets the same rules as
        jobs/train.py; the messages name the flags, which the command's users type."""
        if (self.voc is None) == (self.images is None):
            raise UserError("give either --images and --masks, or --voc")
        if self.images and not self.masks:
            raise UserError("--images needs --masks")
        if bool(self.val_images) != bool(self.val_masks):
            raise UserError("--val-images and --val-masks go together")
        if self.num_classes < 2:
            raise UserError("--num-classes must be at least 2")
        if self.patch_size and self.input_size not in (None, self.patch_size):
            raise UserError("--patch-size sets the model input: drop --input-size")
        if self.patches_per_image and not self.patch_size:
            raise UserError("--patches-per-image needs --patch-size")
        size = self.patch_size or self.input_size or 256
        if size % 16:
            raise UserError(f"--{'patch' if self.patch_size else 'input'}-size {size}: must be a multiple of 16")
        if self.batch_size % self.workers:
            raise UserError(f"--batch-size {self.batch_size} must be a multiple of --workers {self.workers}")
        names = self.class_names or (
            VOC_CLASS_NAMES[: self.num_classes] if self.voc and self.num_classes <= 21 else None
        )
        names = names or tuple(f"class_{i}" for i in range(self.num_classes))
        if len(names) != self.num_classes:
            raise UserError(f"--class-names gives {len(names)} names for --num-classes {self.num_classes}")
        if self.class_weights and len(self.class_weights) != self.num_classes:
            raise UserError(f"--class-weights gives {len(self.class_weights)} weights for {self.num_classes} classes")
        if self.backbone_weights and self.base_filters != 64:
            raise UserError("--backbone-weights holds VGG16 at full width: use --base-filters 64")
        if self.backbone_weights and not os.path.isfile(self.backbone_weights):
            raise UserError(f"--backbone-weights {self.backbone_weights}: no such file")
        name = self.name or Path(self.output.rstrip("/")).name or "unet"
        weights = self.backbone_weights and os.path.abspath(self.backbone_weights)  # provenance names the file in full
        return replace(self, class_names=tuple(names), name=name, input_size=size, backbone_weights=weights)


@dataclass(frozen=True)
class TrainingPlan:
    """What every worker must agree on before the first step."""

    steps_per_epoch: int
    worker_batch: int
    threads: int
    fingerprint: str
    train_pairs: int
    val_pairs: int
    crops: tuple[int, ...] = ()
    """Samples of each training pair per epoch (crops with patch_size, else 1)."""


@dataclass(frozen=True)
class WorkerTask:
    """What every training worker starts from, all read on the driver. Ray Train hands its workers one
    dict (`train_loop_config`); the task travels as that dict's single value, under "task", so what a
    worker receives is declared and typed here instead of being a contract of key names between the
    driver and the loop."""

    config: TrainConfig
    plan: TrainingPlan
    train_pairs: pa.Table
    val_pairs: pa.Table
    backbone: dict[str, list[np.ndarray]] | None
    """The --backbone-weights encoder layers' weights by layer name; None: start from random weights."""


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(ReplicaConfig):
    images: str
    masks: str
    output: str
    mask_map: str | None = None
    ignore_index: int | None = None
