"""What a training run is asked to do (TrainConfig), what its workers agree on (TrainingPlan), and what
an evaluation is asked to do (EvaluateConfig: the segment job's replicas, scored against masks)."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.inference.config import ReplicaConfig
from jobs.storage.files import DEFAULT_MAX_BYTES
from unet_core.image import DEFAULT_MAX_PIXELS


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
    input_size: int = 256
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


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(ReplicaConfig):
    images: str
    masks: str
    output: str
    mask_map: str | None = None
    ignore_index: int | None = None
