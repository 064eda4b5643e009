"""Image bytes in, model-ready pixels out, and the geometry to map a mask back.

Every failure to decode raises `DecodeError` with a reason a person can act on, so the
pipeline can turn it into an error row instead of a dead job. Pillow's parsers raise nearly any
exception type on crafted files (OverflowError and TypeError from TIFF directories with absurd
counts or types, struct.error, IndexError, ...), so any exception from Pillow is a DecodeError.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
"""Refuse images above this many pixels before decoding (decompression bombs)."""

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
"""Precisions for inference and training; here, free of TensorFlow, so command lines can offer them without loading it."""

Image.MAX_IMAGE_PIXELS = None  # our own, configurable limit replaces Pillow's fixed one (see _open)


class DecodeError(ValueError):
    """The bytes are not an image this system can read; the message says why."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an upright RGB uint8 array of shape (height, width, 3)."""
    image = _open(data, max_pixels)
    try:
        image.seek(0)
        return _upright_rgb(image)
    except Exception as exc:  # see the module docstring
        raise DecodeError(f"corrupt or truncated image data ({_reason(exc)})") from exc


def decode_letterboxed(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, "Letterbox"]:
    """Decode image bytes straight into the square model input, with the image's own upright size
    in the Letterbox. A JPEG is decoded at the smallest of its DCT scales (1/8, 1/4, 1/2) that
    still covers the letterbox: a 12-megapixel photo bound for 512 pixels is never decoded whole,
    which is most of what its CPU side cost."""
    image = _open(data, max_pixels)
    try:
        image.seek(0)
        turned = _turned(image)
        width, height = reversed(image.size) if turned else image.size  # upright
        box = Letterbox.fit(height, width, size)
        stored = (box.inner_height, box.inner_width) if turned else (box.inner_width, box.inner_height)
        image.draft(None, stored)  # formats without DCT scaling ignore it
        return place(_upright_rgb(image), box), box
    except Exception as exc:  # see the module docstring
        raise DecodeError(f"corrupt or truncated image data ({_reason(exc)})") from exc


def _turned(image: Image.Image) -> bool:
    """Whether the EXIF orientation turns the image by a quarter (orientations 5 to 8)."""
    return image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)


def _upright_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(_to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse oversized images before any pixel is decoded."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise DecodeError("not a recognised image format") from exc
    except Exception as exc:  # see the module docstring
        raise DecodeError(f"corrupt or truncated image data ({_reason(exc)})") from exc
    width, height = image.size
    refuse_oversized(width, height, max_pixels)
    if width < 1 or height < 1:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    return image


def refuse_oversized(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """Refuse from its header's size what would take more than `max_pixels` to decode: a few bytes
    of PNG can declare gigapixels."""
    if width * height > max_pixels:
        raise DecodeError(
            f"{what} has {width}x{height} = {width * height:,} pixels, above the max_pixels limit of {max_pixels:,}"
        )


def _reason(exc: Exception) -> str:
    """The exception's own words, with its type where those words alone would be cryptic."""
    return str(exc) if isinstance(exc, (OSError, ValueError, SyntaxError)) else f"{type(exc).__name__}: {exc}"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; high bit depths are scaled, transparency goes to black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit, 32-bit or float grey levels to 0..255 by the range of the stored type.

    A fixed range (not per-image min/max) keeps brightness comparable across a collection.
    """
    peak = float(values.max(initial=0))
    if values.dtype.kind == "f":
        top = 1.0 if peak <= 1.0 else 255.0
    elif values.dtype == np.uint16 or peak > 255:
        top = 65535.0
    else:
        top = 255.0
    return np.clip(values.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Letterbox:
    """Where an image of `height` x `width` sits inside the square model input."""

    height: int
    width: int
    size: int
    top: int
    left: int
    inner_height: int
    inner_width: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> "Letterbox":
        scale = size / max(height, width)
        inner_h = max(1, min(size, round(height * scale)))
        inner_w = max(1, min(size, round(width * scale)))
        return cls(height, width, size, (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w)

    def inner(self, values: np.ndarray) -> np.ndarray:
        """The part of a model-space map (image, mask, confidence) that covers the image."""
        return values[self.top : self.top + self.inner_height, self.left : self.left + self.inner_width]

    def repeats(self) -> tuple[np.ndarray, np.ndarray]:
        """How many of the image's rows, and of its columns, map to each row and column of the inner
        box (nearest neighbour at pixel centres, as `unletterbox` maps them)."""
        return (
            np.bincount(_nearest_index(self.height, self.inner_height), minlength=self.inner_height),
            np.bincount(_nearest_index(self.width, self.inner_width), minlength=self.inner_width),
        )


def letterbox(image: np.ndarray, size: int, resample: int = Image.BILINEAR) -> tuple[np.ndarray, Letterbox]:
    """Scale an image to fit a size x size square, keeping its aspect ratio, padded with black."""
    box = Letterbox.fit(image.shape[0], image.shape[1], size)
    return place(image, box, resample), box


def place(image: np.ndarray, box: Letterbox, resample: int = Image.BILINEAR) -> np.ndarray:
    """Scale an image (the one `box` was fitted to, or a reduced decode of it) into its box."""
    resized = Image.fromarray(image).resize((box.inner_width, box.inner_height), resample)
    canvas = np.zeros((box.size, box.size) + image.shape[2:], dtype=image.dtype)
    box.inner(canvas)[...] = np.asarray(resized)
    return canvas


def unletterbox(values: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map a per-pixel map (mask, confidence) from model input space back to the original image.

    Nearest-neighbour at pixel centres: each original pixel takes the value of the model pixel
    its centre falls in, so an upscaled letterbox maps back exactly. The indices only ever grow,
    so each model row and column is repeated, which is several times faster than gathering.
    """
    rows, cols = box.repeats()
    return np.repeat(np.repeat(box.inner(values), rows, axis=0), cols, axis=1)


def _nearest_index(original: int, scaled: int) -> np.ndarray:
    centres = (np.arange(original) + 0.5) * (scaled / original)
    return np.minimum(centres.astype(np.int64), scaled - 1)
