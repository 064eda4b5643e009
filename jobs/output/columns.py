"""Every column of the job's tables, declared once.

A column's Arrow type here is the only statement of its type: the Parquet schemas of `images`,
`class_stats` and `current` (`jobs.output.tables.SCHEMAS`), Delta's types where a column is added to
a root written before it (`deltalake.Schema.from_arrow`) and the tables the part writer builds all
follow from it. A column the stages' batches carry under its own name is written as it is, so adding
one is its line here and the stage that computes it; a `made` column is made by the part writer from
other values (`jobs.inference.stages`). `runs` is declared by its record (`jobs.output.records`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from unet_core.quality import SIGNALS

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    made: bool = False
    """Made by the part writer from other values, not carried by the batches under this name."""

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type)


def schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([column.field for column in columns])


CLASS_COLUMNS = (
    Column("class_id", pa.int16(), made=True),
    Column("class_name", pa.string(), made=True),
    Column("pixels", pa.int64(), made=True),
    Column("fraction", pa.float64(), made=True),
    Column("mean_confidence", pa.float64(), made=True),
)
"""One class's statistics in one image: a row of `class_stats`, an element of `images.classes`."""

IMAGE_COLUMNS = (
    Column("image_id", pa.string()),
    Column("image_uri", pa.string()),
    Column("source_size", pa.int64()),
    Column("source_version", pa.string()),
    Column("source_modified", TIMESTAMP),
    Column("width", pa.int32()),
    Column("height", pa.int32()),
    Column("status", pa.string(), made=True),
    Column("error", pa.string(), made=True),
    Column("error_kind", pa.string(), made=True),
    Column("mask_png", pa.binary(), made=True),
    Column("classes", pa.list_(pa.struct(schema(CLASS_COLUMNS))), made=True),
    Column("model_name", pa.string(), made=True),
    Column("model_sha256", pa.string(), made=True),
    Column("processed_at", TIMESTAMP, made=True),
    *(Column(name, pa.float64()) for name in SIGNALS),
)
"""A row of `images`: one image of one run (`run_id` lives in the partition path)."""

CLASS_STATS_COLUMNS = (
    Column("image_id", pa.string(), made=True),
    Column("image_uri", pa.string(), made=True),
    *CLASS_COLUMNS,
)

CURRENT_RUN_COLUMNS = (
    Column("commit_version", pa.int64()),
    Column("listed_at", TIMESTAMP),
    Column("deleted_at", TIMESTAMP),
)
"""Columns of `current` that come from the run, not from its `images` rows."""

RUN_ID = Column("run_id", pa.string())
"""The partition column of `images` and `class_stats`, and a column of `current`."""

NOT_CURRENT = ("mask_png",)
"""Columns of `images` that `current` leaves out: the masks stay in the run's partition."""

CURRENT_COLUMNS = (
    *(column for column in IMAGE_COLUMNS if column.name not in NOT_CURRENT),
    RUN_ID,
    *CURRENT_RUN_COLUMNS,
)
