"""The selection of a run's images: each listed image once, and with `--incremental` only those that
have no current result from this model.

The listing streams in; it and `current`'s done versions are cut into hash partitions on the
driver's scratch disk (`jobs.output.spill`), then joined a partition at a time, so the driver holds
one batch of the listing or one partition, never the collection.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.output.spill import Partitions, partition_sql
from jobs.output.tables import committed_files, scan, sql_strings
from jobs.storage.files import filesystem
from jobs.storage.listing import LISTING_SCHEMA

BATCH_ROWS = 1 << 18
"""Listing rows gathered before they are cut into partitions (a file of about BATCH_ROWS / PARTITIONS
rows each)."""
PARTITIONS = 128
"""Partitions of a listing longer than one batch."""
PASS_ROWS = 1 << 15
"""Listing rows, or earlier rows, joined at once at most, about: a larger partition is selected in
several passes (by the rest of the URI's hash), so the join holds as much at 20 million images as at
2 million."""


@dataclass(frozen=True)
class Selection:
    """`--incremental`: skip what this model has already done."""

    model_sha256: str
    retry_errors: bool
    """Every error is done again, not only transient ones."""


def partitioned(listing: Iterable[pa.Table], scratch: str) -> Partitions:
    """The listing, streamed into partitions under `scratch`; a listing of one batch is one partition."""
    batches = _numbered(_rebatched(listing, BATCH_ROWS))
    head = list(itertools.islice(batches, 2))
    listed = Partitions(scratch, "listed", 1 if len(head) < 2 else PARTITIONS)
    for batch in itertools.chain(head, batches):
        listed.add_listing(batch)
    return listed


def selected(listed: Partitions, output: str, selection: Selection | None,
             scratch: str) -> Iterator[tuple[int, pa.Table]]:
    """The `partitioned` listing a partition at a time: (images listed in it, its rows to process, in
    listing order).

    A file named more than once counts once, as last named. With a selection an image is done when
    its current row is for this very version (URI, size, version) and came from this model; an error
    counts as done unless it was transient (the store failed, not the file) or `retry_errors` asks
    for every error. An image listed without a version (a list file with no ETag, version or
    modification time column) is never done: nothing could tell that it was replaced."""
    done = _spill_done(output, selection, listed.count, scratch) if selection else None
    con = duckdb.connect(config={"threads": 1})
    for index in range(listed.count):
        passes = -(-max(listed.rows_in(index), done.rows_in(index) if done else 0) // PASS_ROWS)
        for part in range(passes):
            yield _select(con, listed.files(index), done.files(index) if done else [], f"rest % {passes} = {part}")


def _rebatched(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of about `rows` rows (the last one shorter)."""
    held, count = [], 0
    for table in tables:
        held.append(table)
        count += table.num_rows
        if count >= rows:
            yield pa.concat_tables(held)
            held, count = [], 0
    if count:
        yield pa.concat_tables(held)


def _numbered(batches: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Each row's place in the listing, which orders the plan and says which naming of a file is last."""
    start = 0
    for batch in batches:
        yield batch.append_column("position", pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64)))
        start += batch.num_rows


def _spill_done(output: str, selection: Selection, count: int, scratch: str) -> Partitions | None:
    """`current`'s versions that count as done for this model, as 128-bit keys (two 64-bit halves: an
    unsigned 128-bit number does not survive Arrow), partitioned."""
    files = committed_files(output, "current")
    if not files:
        return None
    con = duckdb.connect(config={"threads": 1})
    if "://" in output:
        con.register_filesystem(filesystem(output)[0])
    # an error row counts as done unless the store failed (transient) or every error is retried
    status = "AND status = 'ok'" if selection.retry_errors else "AND coalesce(error_kind, '') <> 'transient'"
    reader = con.sql(f"""
        SELECT {partition_sql(count)}, {VERSION_KEY} FROM ({scan(con, "current", files)})
        WHERE model_sha256 = $model {status}""", params={"model": selection.model_sha256}).to_arrow_reader(BATCH_ROWS)
    done = Partitions(scratch, "done", count)
    for batch in reader:
        done.add(pa.Table.from_batches([batch]))
    return done


def _select(con: duckdb.DuckDBPyConnection, listed: list[str], done: list[str], rows: str) -> tuple[int, pa.Table]:
    """One pass over a partition (its `rows`): each URI as last named, and whether its version is
    done. Keys are a 128-bit hash (md5) of the version, so a pass's join holds 16 bytes per earlier row; an accidental
    collision (which would skip one image) has odds near 1e-24 even for 10 million images against
    10 million earlier rows."""
    earlier = f"SELECT DISTINCT hi, lo FROM read_parquet([{sql_strings(done)}]) WHERE {rows}" if done else \
        "SELECT 0::UBIGINT AS hi, 0::UBIGINT AS lo WHERE false"
    found = con.sql(f"""
        WITH listed AS (SELECT *, {VERSION_KEY} FROM read_parquet([{sql_strings(listed)}]) WHERE {rows}
                        QUALIFY row_number() OVER (PARTITION BY image_uri ORDER BY position DESC) = 1)
        SELECT image_uri, source_size, source_version, source_modified,
               source_version <> '' AND earlier.hi IS NOT NULL AS done
        FROM listed LEFT JOIN ({earlier}) AS earlier USING (hi, lo)
        ORDER BY position""").to_arrow_table()
    todo = found.filter(pc.invert(found.column("done"))).drop_columns(["done"])
    return found.num_rows, todo.cast(LISTING_SCHEMA)


VERSION = "image_uri || chr(0) || source_size::VARCHAR || chr(0) || source_version"
VERSION_KEY = f"md5_number_upper({VERSION}) AS hi, md5_number_lower({VERSION}) AS lo"
"""An image version (URI, size, version) as a 128-bit number, in two columns."""
