"""The model's facts every stage needs, read once on the driver before any replica starts."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.common.errors import UserError
from unet_core.errors import ArtifactError, UnsafeModelError
from unet_core.metadata import check_model_file, read_metadata


@dataclass(frozen=True)
class ModelInfo:
    """What every stage needs to know of the model, without loading it."""

    uri: str
    name: str
    sha256: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    input_size: int
    mode: str = "letterbox"
    """The inference mode the model was trained for (artifact metadata `mode`)."""


def model_info(uri: str, allow_unsafe: bool = False) -> ModelInfo:
    """The artifact's metadata, its model file checked against its sha256 and for code, so a refused,
    tampered or corrupt model is one clear error before any replica starts, and the driver never
    imports TensorFlow."""
    try:
        meta = read_metadata(uri)
        check_model_file(uri, meta, allow_unsafe)
    except UnsafeModelError as exc:
        raise UserError(str(exc), "unsafe_allow_code") from None
    except ArtifactError as exc:  # missing, malformed, tampered: the flag that named it
        raise UserError(str(exc), "model") from None
    height, width = meta.input_size
    if height != width:
        raise UserError(f"{uri}: letterboxing needs a square model input, this one is {height}x{width}")
    return ModelInfo(uri, meta.name, meta.sha256, tuple(meta.class_names), tuple(meta.colors), height, meta.mode)
