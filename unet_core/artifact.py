"""A model artifact: one directory holding `model.keras` and `metadata.json`.

Everything `segment.py` needs to run a model (classes, colours, input size, normalisation)
travels with it, and the sha256 ties every output row to the exact weights that made it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field

import unet_core.quiet_tensorflow  # noqa: F401  (before TensorFlow loads: see its docstring)
import fsspec
import keras
import numpy as np

from unet_core.errors import ArtifactError
from unet_core.masks import default_colors

FORMAT = "unet-artifact/1"
MODEL_FILE = "model.keras"
DEFAULT_NORMALIZATION = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class ArtifactMetadata:
    class_names: list[str]
    colors: list[tuple[int, int, int]]
    input_size: tuple[int, int]
    sha256: str
    name: str = "unet"
    normalization: dict = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    """Applied to pixels scaled to 0..1: (x - mean) / std."""
    created_at: str = ""
    source: dict = field(default_factory=dict)
    """Provenance: how the model was made (training data fingerprint, epochs, metrics...)."""
    mode: str = "letterbox"
    """How the model learnt to see images: 'letterbox' (whole images scaled into the input) or 'tile'
    (full-resolution crops of the input size). Segmenting it another way shows it a scale it never
    saw, so segment.py and evaluate.py run it this way unless told otherwise."""
    format: str = FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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
            sha256=_sha256_file(local_model),
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


def read_metadata(uri: str) -> ArtifactMetadata:
    """Read only the metadata (cheap: no TensorFlow graph is built)."""
    fs, root = fsspec.core.url_to_fs(uri)
    path = f"{root.rstrip('/')}/{METADATA_FILE}"
    if not fs.exists(path):
        raise ArtifactError(f"no model artifact at {uri} (missing {METADATA_FILE})")
    with fs.open(path, "r") as handle:
        raw = json.load(handle)
    if raw.get("format") != FORMAT:
        raise ArtifactError(f"{uri}: unknown artifact format {raw.get('format')!r}, expected {FORMAT!r}")
    raw["colors"] = [tuple(color) for color in raw["colors"]]
    raw["input_size"] = tuple(raw["input_size"])
    return ArtifactMetadata(**raw)


def load_artifact(uri: str, allow_unsafe: bool = False) -> Artifact:
    """Load an artifact, checking its sha256 and refusing code-carrying models unless allowed."""
    metadata = read_metadata(uri)
    fs, root = fsspec.core.url_to_fs(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local_model = os.path.join(tmp, MODEL_FILE)
        fs.get_file(f"{root.rstrip('/')}/{MODEL_FILE}", local_model)
        digest = _sha256_file(local_model)
        if digest != metadata.sha256:
            raise ArtifactError(f"{uri}: model file sha256 {digest[:12]}... does not match metadata {metadata.sha256[:12]}...")
        try:
            model = keras.models.load_model(local_model, compile=False, safe_mode=not allow_unsafe)
        except ValueError as exc:
            if "safe_mode" in str(exc) or "Lambda" in str(exc):
                raise ArtifactError(
                    f"{uri}: the model contains code (e.g. a Lambda layer) and was refused by Keras safe mode; "
                    "load it only if you trust its author (--unsafe-allow-code)"
                ) from exc
            raise ArtifactError(f"{uri}: cannot load model ({exc})") from exc
    return Artifact(model, metadata)


def normalize(pixels: np.ndarray, normalization: dict) -> np.ndarray:
    """uint8 pixels to the float input the model was trained on."""
    mean = np.asarray(normalization["mean"], dtype=np.float32)
    std = np.asarray(normalization["std"], dtype=np.float32)
    return (pixels.astype(np.float32) / 255.0 - mean) / std


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
