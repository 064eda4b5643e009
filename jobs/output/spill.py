"""Hash partitions on the driver's scratch disk: how planning handles a collection it never holds.

A run's listing and the earlier results it is checked against are both cut by the same hash of the
image URI into partitions small enough to join one at a time; everything about one image (every
time it was named, its earlier result) lands in the same partition.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.common.errors import UserError
from jobs.storage.files import filesystem


SPILL_MEMORY = "256MB"
"""What a spilling DuckDB holds in memory at most before it writes to the scratch disk."""


@contextlib.contextmanager
def spilling_duckdb(output: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A one-thread DuckDB that reads the output's storage and spills joins and aggregates larger than
    SPILL_MEMORY to a scratch folder (under TMPDIR), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="spill-") as scratch:
        con = duckdb.connect(config={"threads": 1, "memory_limit": SPILL_MEMORY, "temp_directory": scratch})
        if "://" in output:
            con.register_filesystem(filesystem(output)[0])
        try:
            yield con
        finally:
            con.close()


def partition_sql(count: int) -> str:
    """The partition of a row, and the rest of its hash (which splits a large partition into passes),
    as DuckDB computes them from the row's image_uri."""
    return f"hash(image_uri) % {count} AS partition, {rest_sql(count)}"


def rest_sql(count: int) -> str:
    """The rest of a row's hash once its partition of `count` is taken."""
    return f"hash(image_uri) // {count} AS rest"


def _write(rows: pa.Table, path: str) -> None:
    try:
        pq.write_table(rows, path, compression="lz4")
    except OSError as exc:
        raise UserError(
            f"planning cannot write its scratch file {path} ({exc.strerror or exc}); set TMPDIR to "
            "a disk with room for about 100 bytes per listed image"
        ) from exc


class Partitions:
    """Tables written by their `partition` column into Parquet files, one file per partition per add.
    No writer stays open between adds: 128 open Parquet writers keep about 4 MiB of buffers each."""

    def __init__(self, folder: str, name: str, count: int) -> None:
        self.folder, self.name, self.count = folder, name, count
        self._files: dict[int, list[str]] = {}
        self._rows = np.zeros(count, np.int64)

    def add(self, table: pa.Table) -> None:
        """Rows with `partition_sql`'s columns; `partition` is dropped on the way."""
        if not table.num_rows:
            return
        table = table.sort_by("partition")
        bounds = np.searchsorted(table.column("partition").to_numpy(), np.arange(self.count + 1))
        rows = table.drop_columns(["partition"])
        self._rows += np.diff(bounds)
        for index in np.flatnonzero(np.diff(bounds)):
            files = self._files.setdefault(int(index), [])
            path = os.path.join(self.folder, f"{self.name}-{index:05d}-{len(files):05d}.parquet")
            _write(rows.slice(bounds[index], bounds[index + 1] - bounds[index]), path)
            files.append(path)

    def add_listing(self, table: pa.Table) -> None:
        """Rows with an image_uri column: their partition is computed here."""
        con = duckdb.connect(config={"threads": 1})
        con.register("rows", table)
        self.add(con.sql(f"SELECT *, {partition_sql(self.count)} FROM rows").to_arrow_table())

    def files(self, index: int) -> list[str]:
        """The partition's files (none where no row fell into it)."""
        return self._files.get(index, [])

    @property
    def rows(self) -> int:
        return int(self._rows.sum())

    def rows_in(self, index: int) -> int:
        return int(self._rows[index])
