"""An artifact's metadata and the checks that need no TensorFlow: what a driver plans a run with.

The driver of a segmentation run reads the metadata, verifies the model file's sha256 and refuses
code-carrying models from here, so a bad artifact is one clear error before any replica starts,
and the driver never pays TensorFlow's start-up. Each replica still loads the model in Keras'
safe mode, which remains the guard.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field

import fsspec

from unet_core.errors import ArtifactError, UnsafeModelError

FORMAT = "unet-artifact/1"
MODEL_FILE = "model.keras"
DEFAULT_NORMALIZATION = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
METADATA_FILE = "metadata.json"
UNSAFE = (
    "the model contains code (e.g. a Lambda layer) and was refused by Keras safe mode; load it only "
    "if you trust its author"
)
CODE_LAYERS = ("Lambda",)
"""Keras layers that carry Python code, which Keras' safe mode refuses to load."""


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


def read_metadata(uri: str) -> ArtifactMetadata:
    """Read only the metadata (cheap: no TensorFlow graph is built)."""
    fs, root = fsspec.core.url_to_fs(uri)
    path = f"{root.rstrip('/')}/{METADATA_FILE}"
    if not fs.exists(path):
        raise ArtifactError(f"no model artifact at {uri} (missing {METADATA_FILE})")
    try:
        with fs.open(path, "r") as handle:
            raw = json.load(handle)
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        if raw.get("format") != FORMAT:
            raise ArtifactError(f"{uri}: unknown artifact format {raw.get('format')!r}, expected {FORMAT!r}")
        raw["colors"] = [tuple(color) for color in raw["colors"]]
        raw["input_size"] = tuple(raw["input_size"])
        return ArtifactMetadata(**raw)
    except ArtifactError:
        raise
    except (ValueError, TypeError, KeyError) as exc:  # not JSON, or not the fields an artifact writes
        raise ArtifactError(f"{uri}: {METADATA_FILE} is not a model artifact's metadata ({exc})") from None


def check_model_file(uri: str, metadata: ArtifactMetadata, allow_unsafe: bool = False) -> None:
    """The model file matches the metadata's sha256, and carries no code unless allowed."""
    fs, root = fsspec.core.url_to_fs(uri)
    with fs.open(f"{root.rstrip('/')}/{MODEL_FILE}", "rb") as handle:
        digest = _sha256_stream(handle)
        if digest != metadata.sha256:
            raise ArtifactError(
                f"{uri}: model file sha256 {digest[:12]}... does not match metadata {metadata.sha256[:12]}..."
            )
        if not allow_unsafe and _carries_code(handle):
            raise UnsafeModelError(f"{uri}: {UNSAFE}")


def _carries_code(handle) -> bool:
    """Whether the .keras file's layer config names a code-carrying layer (read from the zip, no Keras)."""
    handle.seek(0)
    try:
        with zipfile.ZipFile(handle) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"not a readable .keras model file ({exc})") from exc
    return any(name in CODE_LAYERS for name in _class_names(config))


def _class_names(config: object):
    if isinstance(config, dict):
        if isinstance(config.get("class_name"), str):
            yield config["class_name"]
        for value in config.values():
            yield from _class_names(value)
    elif isinstance(config, list):
        for value in config:
            yield from _class_names(value)


def sha256_file(path: str) -> str:
    with open(path, "rb") as handle:
        return _sha256_stream(handle)


def _sha256_stream(handle) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()
