"""Synthetic parts of the real schemas, as a run of tiny images writes them: the table benchmarks and
the table tests commit these without running a model."""

from __future__ import annotations

import datetime as dt
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.output import tables
from jobs.output.records import RunRecord
from unet_core.quality import SIGNALS

CLASSES = ("background", "thing", "stuff")


def write_part(output: str, run_id: str, first: int, rows: int, version: str = "1", stride: int = 1) -> tables.Part:
    """One images part and one class_stats part holding images `first`, `first + stride`, ... (`rows` of them)."""
    ids = [f"img{index:09d}" for index in range(first, first + rows * stride, stride)]
    uris = [f"/data/{i}.png" for i in ids]
    pixels = np.random.default_rng(first).integers(0, 100, (rows, len(CLASSES)))
    flat = pa.table(
        {
            "image_id": np.repeat(ids, len(CLASSES)),
            "image_uri": np.repeat(uris, len(CLASSES)),
            "class_id": pa.array(np.tile(np.arange(len(CLASSES)), rows), pa.int16()),
            "class_name": np.tile(CLASSES, rows),
            "pixels": pixels.ravel(),
            "fraction": (pixels / pixels.sum(axis=1, keepdims=True).clip(1)).ravel(),
            "mean_confidence": np.full(pixels.size, 0.9),
        },
        schema=tables.CLASS_STATS_FILE_SCHEMA,
    )
    now = dt.datetime.now(dt.timezone.utc)
    images = pa.table(
        {
            "image_id": ids,
            "image_uri": uris,
            "source_size": [1000] * rows,
            "source_version": [version] * rows,
            "source_modified": [now] * rows,
            "width": [10] * rows,
            "height": [10] * rows,
            "status": ["ok"] * rows,
            "error": [None] * rows,
            "error_kind": [None] * rows,
            "mask_png": [b"\x89PNG" * 8] * rows,
            "classes": tables.nested_classes(flat, np.ones(rows, bool), len(CLASSES)),
            "model_name": ["bench"] * rows,
            "model_sha256": ["0" * 64] * rows,
            "processed_at": [now] * rows,
            **{name: np.random.default_rng(first).random(rows) for name in SIGNALS},
        },
        schema=tables.IMAGES_FILE_SCHEMA,
    )
    name = f"part-{uuid.uuid4().hex}.parquet"
    sizes = {}
    for table, data in (("images", images), ("class_stats", flat)):
        folder = os.path.join(output, table, f"run_id={run_id}")
        os.makedirs(folder, exist_ok=True)
        pq.write_table(data, os.path.join(folder, name))
        sizes[table] = os.path.getsize(os.path.join(folder, name))
    return tables.Part(name, sizes["images"], sizes["class_stats"], rows, flat.num_rows)


def write_run(
    output: str, run_id: str, first: int, rows: int, part_rows: int, version: str = "1", stride: int = 1
) -> list:
    """A run's parts: `rows` images numbered `first`, `first + stride`, ..., `part_rows` per part."""
    return [
        write_part(output, run_id, first + done * stride, min(part_rows, rows - done), version, stride)
        for done in range(0, rows, part_rows)
    ]


def run_record(run_id: str, rows: int) -> RunRecord:
    now = dt.datetime.now(dt.timezone.utc)
    return RunRecord(
        run_id=run_id,
        started_at=now,
        committed_at=now,
        inputs=rows,
        skipped=0,
        processed=rows,
        ok=rows,
        errors=0,
        model_name="bench",
        model_sha256="0" * 64,
        model_uri="/m",
        class_names=tuple(CLASSES),
        class_pixels=(0,) * len(CLASSES),
        wall_seconds=1.0,
        images_per_second=1.0,
        replicas="[]",
        config="{}",
        listed_at=now.isoformat(),
    )
