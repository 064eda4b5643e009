"""What a segmentation run is asked to do, as typed configs.

Segment and evaluate run the model the same way (`ReplicaConfig`, one set of flags in
`jobs.cli.flags`): a score is only worth what the masks it scores are, so evaluate
(`jobs.training.config.EvaluateConfig`) runs exactly what segment runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.storage.files import DEFAULT_MAX_BYTES
from unet_core.image import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Inference:
    """How each image is fed to the model: what travels from the flags to every replica."""

    precision: str = "auto"
    tile_overlap: float | None = None
    """None: letterbox the whole image into one model input; else sliding-window tiles at full size."""
    tta: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_unsafe: bool = False


@dataclass(frozen=True, kw_only=True)
class ReplicaConfig:
    """The model, how its replicas are laid out, and how images meet it."""

    model: str
    batch_size: int = 8
    actors: str = "auto"
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    precision: str = "auto"
    mode: str | None = None
    tile_overlap: float = 0.25
    tta: str = "none"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    unsafe_allow_code: bool = False
    address: str | None = None
    wait_for_nodes: float = 300.0
    verbosity: str = "normal"
    log_level: str | None = None
    s3_endpoint_url: str | None = None
    anonymous: bool = False

    def inference(self) -> Inference:
        """The one reading of the replica flags, so both jobs hand the replicas the same options."""
        return Inference(
            precision=self.precision,
            tile_overlap=self.tile_overlap if self.mode == "tile" else None,
            tta=self.tta == "flip",
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            allow_unsafe=self.unsafe_allow_code,
        )


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(ReplicaConfig):
    inputs: list[str]
    output: str
    rows_per_file: int = 2048
    mask_resolution: str = "native"
    run_id: str | None = None
    progress_every: float = 30.0
    incremental: bool = False
    retry_errors: bool = False
    max_error_rate: float = 1.0
