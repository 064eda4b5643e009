"""Hash partitions on the driver's scratch disk: how planning handles a collection it never holds.

A run's listing and the earlier results it is checked against are both cut by the same hash of the
image URI into partitions small enough to join one at a time; everything about one image (every
time it was named, its earlier result) lands in the same partition.
"""
from __future__ import annotations

import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def partition_sql(count: int) -> str:
    """The partition of a row, as DuckDB computes it from the row's image_uri."""
    return f"hash(image_uri) % {count}"


class Partitions:
    """Tables written into `count` Parquet files by their `partition` column, a row group per add."""

    def __init__(self, folder: str, name: str, count: int) -> None:
        self.folder, self.name, self.count = folder, name, count
        self.rows = 0
        self._writers: dict[int, pq.ParquetWriter] = {}

    def add(self, table: pa.Table) -> None:
        """Rows with a `partition` column (`partition_sql`), which is dropped on the way."""
        if not table.num_rows:
            return
        self.rows += table.num_rows
        table = table.sort_by("partition")
        bounds = np.searchsorted(table.column("partition").to_numpy(), np.arange(self.count + 1))
        rows = table.drop_columns(["partition"])
        for index in np.flatnonzero(np.diff(bounds)):
            self._writer(int(index), rows.schema).write_table(rows.slice(bounds[index], bounds[index + 1] - bounds[index]))

    def add_listing(self, table: pa.Table) -> None:
        """Rows with an image_uri column: their partition is computed here."""
        con = duckdb.connect()
        con.register("rows", table)
        self.add(con.sql(f"SELECT *, {partition_sql(self.count)} AS partition FROM rows").to_arrow_table())

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    def path(self, index: int) -> str | None:
        """The partition's file, or None where no row fell into it."""
        return self._path(index) if index in self._writers else None

    def _writer(self, index: int, schema: pa.Schema) -> pq.ParquetWriter:
        if index not in self._writers:
            self._writers[index] = pq.ParquetWriter(self._path(index), schema, compression="lz4")
        return self._writers[index]

    def _path(self, index: int) -> str:
        return os.path.join(self.folder, f"{self.name}-{index:05d}.parquet")
