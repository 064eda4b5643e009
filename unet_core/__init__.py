"""The seed U-Net and everything per-image: decoding, letterboxing, masks, statistics, artifacts.

Knows nothing of Ray, storage layouts or the command line; `jobs/` builds on it.
"""
from unet_core.artifact import Artifact, ArtifactError, ArtifactMetadata, load_artifact, read_metadata, save_artifact
from unet_core.image import DEFAULT_MAX_PIXELS, DecodeError, Letterbox, decode_image, letterbox, unletterbox
from unet_core.masks import ClassStats, class_statistics, decode_mask_png, default_colors, encode_mask_png
from unet_core.model import build_unet, unet_config

__all__ = [
    "Artifact", "ArtifactError", "ArtifactMetadata", "ClassStats", "DEFAULT_MAX_PIXELS", "DecodeError",
    "Letterbox", "build_unet", "class_statistics", "decode_image", "decode_mask_png", "default_colors",
    "encode_mask_png", "letterbox", "load_artifact", "read_metadata", "save_artifact", "unet_config",
    "unletterbox",
]
