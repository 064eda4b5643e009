"""Shared fixtures: a tiny seed U-Net artifact and a folder of images of every awkward kind."""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # bench/synthetic.py: parts without a model

import numpy as np
import pytest
from PIL import Image

pytest_plugins = ["s3_server"]

TINY_CLASSES = ["background", "thing", "stuff"]


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> str:
    """A narrow (base_filters=4) 32x32 replica of the seed graph, randomly initialised."""
    import keras

    from unet_core import build_unet, save_artifact

    keras.utils.set_random_seed(0)
    model = build_unet(len(TINY_CLASSES), (32, 32, 3), base_filters=4)
    uri = str(tmp_path_factory.mktemp("artifact") / "tiny")
    save_artifact(model, uri, TINY_CLASSES, name="tiny")
    return uri


def png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A grey PNG whose valid header declares a huge size: decoding it would need gigabytes."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def jpeg_with_orientation(array: np.ndarray, orientation: int) -> bytes:
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


@pytest.fixture()
def mixed_folder(tmp_path) -> dict[str, str]:
    """One file per awkward case; returns name -> path. `corrupt.png` is the only undecodable one."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "mixed"
    (folder / "nested" / "deeper").mkdir(parents=True)
    rgb = rng.integers(0, 255, (37, 129, 3), dtype=np.uint8)
    files = {
        "grey.png": png_bytes(Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8), mode="L")),
        "rgba.png": png_bytes(Image.fromarray(rng.integers(0, 255, (33, 65, 4), dtype=np.uint8), mode="RGBA")),
        "palette.png": png_bytes(Image.fromarray(rgb).convert("P"), transparency=0),
        "grey16.png": png_bytes(Image.fromarray(rng.integers(0, 65535, (21, 19), dtype=np.uint16))),
        "nested/rotated.jpg": jpeg_with_orientation(rgb, 6),
        "nested/deeper/odd.png": png_bytes(Image.fromarray(rng.integers(0, 255, (513, 257, 3), dtype=np.uint8))),
        "corrupt.png": png_bytes(Image.fromarray(rgb))[:60],
    }
    paths = {}
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        paths[name] = str(path)
    (folder / "notes.txt").write_text("not an image, and not named like one")
    return paths


@pytest.fixture(scope="session")
def slow_artifact(tmp_path_factory) -> str:
    """Wide enough (256x256, base 16) that a run lasts seconds, so a crash lands mid-run."""
    import keras

    from unet_core import build_unet, save_artifact

    keras.utils.set_random_seed(0)
    uri = str(tmp_path_factory.mktemp("slow") / "model")
    save_artifact(build_unet(3, (256, 256, 3), base_filters=16), uri, ["a", "b", "c"])
    return uri
