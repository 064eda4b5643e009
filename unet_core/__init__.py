"""The seed U-Net and everything per-image: decoding, letterboxing, masks, statistics, artifacts.

Knows nothing of Ray, storage layouts or the command line; `jobs/` builds on it. The names that
need TensorFlow (the model and artifacts) load it on first use, so processes that only decode
images or encode masks never pay TensorFlow's start-up time and memory.
"""

from importlib import import_module

from unet_core.errors import ArtifactError
from unet_core.image import DEFAULT_MAX_PIXELS, DecodeError, Letterbox, decode_image, letterbox, unletterbox
from unet_core.metadata import ArtifactMetadata, check_model_file, read_metadata
from unet_core.masks import ClassStats, class_statistics, decode_mask_png, default_colors, encode_mask_png

_NEEDS_TENSORFLOW = {
    "Artifact": "unet_core.artifact",
    "load_artifact": "unet_core.artifact",
    "save_artifact": "unet_core.artifact",
    "build_unet": "unet_core.model",
}

__all__ = [
    "Artifact",
    "ArtifactError",
    "ArtifactMetadata",
    "ClassStats",
    "check_model_file",
    "DEFAULT_MAX_PIXELS",
    "DecodeError",
    "Letterbox",
    "build_unet",
    "class_statistics",
    "decode_image",
    "decode_mask_png",
    "default_colors",
    "encode_mask_png",
    "letterbox",
    "load_artifact",
    "read_metadata",
    "save_artifact",
    "unletterbox",
]


def __getattr__(name: str):
    if name in _NEEDS_TENSORFLOW:
        return getattr(import_module(_NEEDS_TENSORFLOW[name]), name)
    raise AttributeError(f"module 'unet_core' has no attribute {name!r}")
