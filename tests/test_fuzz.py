"""Files that crash decoders: seeded mutations of real files of every common format, crafted TIFF
directories, and files that are not files, through the whole job: one row each, and the job lives."""

import io
import os
import random
import struct
import warnings

import numpy as np
import pytest
from delta_read import delta_sql
from PIL import Image
from test_segment_job import run_job

from unet_core import DecodeError, decode_image
from unet_core.synthetic import make_scene

FORMATS = {
    "png": ("PNG", {}),
    "jpg": ("JPEG", {"quality": 90}),
    "tif": ("TIFF", {"compression": "tiff_lzw"}),
    "gif": ("GIF", {}),
    "webp": ("WEBP", {}),
    "bmp": ("BMP", {}),
}
MUTATIONS = 1020
TYPE_ERRORS = [f"crafted-273-{kind}-2-0.tif" for kind in (2, 5, 11, 12)]
"""StripOffsets as two text, rational or float values: Pillow raised TypeError on these."""
EXTREMES = (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00", b"\x80\x00\x00\x00")


def seed_files() -> dict[str, bytes]:
    """One real file per format, of a synthetic scene."""
    scene, _ = make_scene(np.random.default_rng(3), 40, 56)
    files = {}
    for extension, (name, options) in FORMATS.items():
        buffer = io.BytesIO()
        Image.fromarray(scene).save(buffer, format=name, **options)
        files[extension] = buffer.getvalue()
    return files


def mutate(data: bytes, seeds: list[bytes], rng: random.Random) -> bytes:
    """One of: header fields set to extremes, random bytes, truncation, a splice of another file."""
    out = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        at = rng.randrange(min(len(out), 96))
        out[at : at + 4] = rng.choice(EXTREMES)
    elif kind == 1:
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 2:
        out = out[: rng.randrange(1, len(out))]
    else:
        other, at = rng.choice(seeds), rng.randrange(len(out))
        start = rng.randrange(len(other))
        out = out[:at] + other[start : start + rng.randint(1, 512)] + out[at:]
    return bytes(out)


def crafted_tiffs() -> dict[str, bytes]:
    """TIFFs whose directory entries carry absurd types, counts and offsets: the shape of files that
    made Pillow raise TypeError and OverflowError rather than OSError."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    base = buffer.getvalue()
    directory = struct.unpack_from("<I", base, 4)[0]
    crafted = {}
    for entry in range(struct.unpack_from("<H", base, directory)[0]):
        at = directory + 2 + 12 * entry
        tag = struct.unpack_from("<H", base, at)[0]
        for kind in (2, 5, 11, 12, 13, 18, 65535):
            for count, value in ((2, 0), (0x7FFFFFFF, 1), (0xFFFFFFFF, 0xFFFFFFFF)):
                data = bytearray(base)
                struct.pack_into("<HHII", data, at, tag, kind, count, value)
                crafted[f"crafted-{tag}-{kind}-{count:x}-{value:x}.tif"] = bytes(data)
    return crafted


def test_crafted_tiff_directories_are_decode_errors():
    tiffs = crafted_tiffs()
    assert len(tiffs) > 150
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about every broken tag on the way
        for name, data in tiffs.items():
            if name in TYPE_ERRORS:
                with pytest.raises(DecodeError, match="TypeError"):
                    decode_image(data)
                continue
            try:  # many others still decode (Pillow skips the tag); none may raise anything else
                decode_image(data)
            except DecodeError:
                pass


@pytest.mark.ray
def test_a_thousand_mutated_files_and_non_files_each_become_one_row(tmp_path, tiny_artifact):
    seeds = seed_files()
    rng = random.Random(11)
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(MUTATIONS):
        extension = list(FORMATS)[index % len(FORMATS)]
        (folder / f"m{index:04d}.{extension}").write_bytes(mutate(seeds[extension], list(seeds.values()), rng))
    tiffs = crafted_tiffs()
    crafted = {name: tiffs[name] for name in list(tiffs)[::8] + TYPE_ERRORS}
    for name, data in {**crafted, **{f"seed.{e}": d for e, d in seeds.items()}}.items():
        (folder / name).write_bytes(data)
    os.mkfifo(folder / "fifo.png")  # reading would block forever
    os.symlink("/dev/zero", folder / "zero.png")  # reading would never end
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300_000))
    output = str(tmp_path / "out")
    done = run_job(
        "segment.py",
        "--input",
        str(folder),
        "--output",
        output,
        "--model",
        tiny_artifact,
        "--max-bytes",
        "200000",
        "--run-id",
        "fuzz",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    rows = {
        os.path.basename(r["image_uri"]): r
        for r in delta_sql(output, "SELECT image_uri, status, error FROM images").to_pylist()
    }
    assert sorted(rows) == sorted(os.listdir(folder))  # one row per file, the non-files included
    assert all((r["status"] == "ok") == (r["error"] is None) for r in rows.values())
    assert all(rows[f"seed.{e}"]["status"] == "ok" for e in FORMATS)
    assert all("TypeError" in rows[name]["error"] for name in TYPE_ERRORS)
    assert rows["fifo.png"]["error"].startswith("not a regular file")
    assert rows["zero.png"]["error"].startswith("not a regular file")
    assert "above the max_bytes limit of 200,000" in rows["huge.png"]["error"]
    unexplained = [r["error"] for r in rows.values() if r["error"] and r["error"].startswith("unexpected")]
    assert not unexplained
    errors = sum(r["status"] == "error" for r in rows.values())
    assert 100 < errors < len(rows)  # the mutations did break files, and some still decode
    assert (
        f"{len(rows)} images, 0 skipped, {len(rows)} processed: {len(rows) - errors} ok, {errors} errors" in done.stdout
    )


@pytest.mark.parametrize("limit, refused", [(10, True), (10_000, False)])
def test_the_byte_limit_refuses_before_reading(tmp_path, limit, refused):
    from jobs.storage.files import InputRefused, read_input

    path = tmp_path / "a.png"
    path.write_bytes(bytes(100))
    if refused:
        with pytest.raises(InputRefused, match="above the max_bytes limit of 10"):
            read_input(str(path), 100, limit)
    else:
        assert read_input(str(path), 100, limit) == bytes(100)
