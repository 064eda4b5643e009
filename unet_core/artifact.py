"""A model artifact: one directory holding `model.keras` and `metadata.json`.

Everything `segment.py` needs to run a model (classes, colours, input size, normalisation)
travels with it, and the sha256 ties every output row to the exact weights that made it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import fsspec
import keras
import numpy as np

from unet_core.errors import ArtifactError, UnsafeModelError
from unet_core.metadata import (
    DEFAULT_NORMALIZATION,
    METADATA_FILE,
    MODEL_FILE,
    UNSAFE,
    ArtifactMetadata,
    read_metadata,
    sha256_file,
)
from unet_core.masks import default_colors


@dataclass(frozen=True)
class Artifact:
    model: keras.Model
    metadata: ArtifactMetadata


def save_artifact(
    model: keras.Model,
    uri: str,
    class_names: list[str],
    colors: list[tuple[int, int, int]] | None = None,
    name: str = "unet",
    normalization: dict | None = None,
    source: dict | None = None,
    mode: str = "letterbox",
) -> ArtifactMetadata:
    """Write the model and its metadata under `uri` (a local path or any fsspec URI)."""
    num_classes = int(model.output_shape[-1])
    if len(class_names) != num_classes:
        raise ArtifactError(f"{len(class_names)} class names given for a model with {num_classes} classes")
    colors = [tuple(int(c) for c in color) for color in (colors or default_colors(num_classes))]
    if len(colors) != num_classes:
        raise ArtifactError(f"{len(colors)} colours given for a model with {num_classes} classes")
    with tempfile.TemporaryDirectory() as tmp:
        local_model = os.path.join(tmp, MODEL_FILE)
        model.save(local_model)
        metadata = ArtifactMetadata(
            class_names=list(class_names),
            colors=colors,
            input_size=(int(model.input_shape[1]), int(model.input_shape[2])),
            sha256=sha256_file(local_model),
            name=name,
            normalization=normalization or dict(DEFAULT_NORMALIZATION),
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            source=source or {},
            mode=mode,
        )
        fs, root = fsspec.core.url_to_fs(uri)
        fs.makedirs(root, exist_ok=True)
        fs.put_file(local_model, f"{root.rstrip('/')}/{MODEL_FILE}")
        with fs.open(f"{root.rstrip('/')}/{METADATA_FILE}", "w") as handle:
            json.dump(dataclasses.asdict(metadata), handle, indent=2)
    return metadata


def load_artifact(uri: str, allow_unsafe: bool = False) -> Artifact:
    """Load an artifact, checking its sha256 and refusing code-carrying models unless allowed."""
    metadata = read_metadata(uri)
    fs, root = fsspec.core.url_to_fs(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local_model = os.path.join(tmp, MODEL_FILE)
        fs.get_file(f"{root.rstrip('/')}/{MODEL_FILE}", local_model)
        digest = sha256_file(local_model)
        if digest != metadata.sha256:
            raise ArtifactError(
                f"{uri}: model file sha256 {digest[:12]}... does not match metadata {metadata.sha256[:12]}..."
            )
        try:
            model = keras.models.load_model(local_model, compile=False, safe_mode=not allow_unsafe)
        except ValueError as exc:
            if "safe_mode" in str(exc) or "Lambda" in str(exc):
                raise UnsafeModelError(f"{uri}: {UNSAFE}") from exc
            raise ArtifactError(f"{uri}: cannot load model ({exc})") from exc
    return Artifact(model, metadata)


def normalize(pixels: np.ndarray, normalization: dict) -> np.ndarray:
    """uint8 pixels to the float input the model was trained on."""
    mean = np.asarray(normalization["mean"], dtype=np.float32)
    std = np.asarray(normalization["std"], dtype=np.float32)
    return (pixels.astype(np.float32) / 255.0 - mean) / std
