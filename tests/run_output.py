"""A real output root for the query, report and export tests, made once per session by the segment job.

run "first":  every image under scenes/ (two are broken: an empty file and `b/fixme.png`)
run "second": b/ again, after `b/fixme.png` was repaired, so its current row is an ok one
run "ghost":  part files with no Delta commit (an unfinished run), which no reader may show
"""

from __future__ import annotations

import glob
import io
import os
import shutil

import numpy as np
import pyarrow as pa
from PIL import Image

from conftest import png_bytes
from delta_read import delta_sql
from test_segment_job import run_job
from unet_core.synthetic import make_scene

SCENES = {  # name -> (height, width)
    "a/street.png": (48, 64),
    "a/odd <b>name.png": (40, 40),
    "a/twin.png": (36, 52),
    "a/twin.jpg": (52, 36),
    "b/field.png": (64, 48),
    "b/nested/deep.png": (30, 70),
}
REPAIRED_SIZE = (44, 44)
BROKEN = {"empty.png": b"", "b/fixme.png": b"\x89PNG\r\n\x1a\n-broken"}
COMPLETE = "complete"
"""Marker written once all three runs are in place: a root without it was cut short and is rebuilt."""


def make_output(base: str, artifact: str) -> dict[str, str]:
    """Build (or reuse, within one session) the folder of scenes and the output root with its three runs."""
    paths = {"scenes": os.path.join(base, "scenes"), "output": os.path.join(base, "output")}
    if os.path.exists(os.path.join(base, COMPLETE)):
        return paths
    shutil.rmtree(base, ignore_errors=True)
    rng = np.random.default_rng(7)
    for name, (height, width) in SCENES.items():
        image, _ = make_scene(rng, height, width)
        _write(paths["scenes"], name, _encode(Image.fromarray(image), name))
    for name, data in BROKEN.items():
        _write(paths["scenes"], name, data)
    _segment(paths["scenes"], paths["output"], artifact, "first")
    image, _ = make_scene(rng, *REPAIRED_SIZE)
    _write(paths["scenes"], "b/fixme.png", png_bytes(Image.fromarray(image)))
    _segment(os.path.join(paths["scenes"], "b"), paths["output"], artifact, "second")
    _leave_unfinished_run(paths["output"])
    assert delta_sql(paths["output"], "SELECT run_id FROM runs ORDER BY run_id").column("run_id").to_pylist() == [
        "first",
        "second",
    ]
    _write(base, COMPLETE, b"")
    return paths


def _encode(image: Image.Image, name: str) -> bytes:
    if name.endswith(".jpg"):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()
    return png_bytes(image)


def _write(root: str, name: str, data: bytes) -> None:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def _segment(inputs: str, output: str, artifact: str, run_id: str) -> None:
    done = run_job(
        "segment.py",
        "--input",
        inputs,
        "--output",
        output,
        "--model",
        artifact,
        "--run-id",
        run_id,
        "--batch-size",
        "4",
        "--actors",
        "1",
        "--cpus-per-actor",
        "1",
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _leave_unfinished_run(output: str) -> None:
    """Copy run "first"'s part files under run_id=ghost with no Delta commit, as a crashed run would leave them."""
    for table in ("images", "class_stats"):
        for index, part in enumerate(sorted(glob.glob(os.path.join(output, table, "run_id=first", "*.parquet")))):
            target = os.path.join(output, table, "run_id=ghost", f"part-ghost{index}.parquet")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(part, target)


def read_run(output: str, table: str, run_id: str) -> pa.Table:
    """A committed run's rows (with `run_id`), read by deltalake itself, independently of the code under
    test; not by globbing the partition, which would take in part files no commit lists."""
    return delta_sql(output, f"SELECT * FROM {table} WHERE run_id = '{run_id}'")


def current_rows(output: str, table: str) -> list[dict]:
    """Each image's rows from the latest run that processed it ("second" supersedes "first"), derived
    from the two runs' rows rather than read from the `current` table under test."""
    second = read_run(output, table, "second").to_pylist()
    redone = {row["image_id"] for row in second}
    return [row for row in read_run(output, table, "first").to_pylist() if row["image_id"] not in redone] + second
