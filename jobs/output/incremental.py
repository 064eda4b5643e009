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

from jobs.output.spill import Partitions, partition_sql, rest_sql, spilling_duckdb
from jobs.output.tables import add_actions, committed_files, files_holding, open_table, scan, sql_strings
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


def selected(
    listed: Partitions, output: str, selection: Selection | None, scratch: str
) -> Iterator[tuple[int, pa.Table]]:
    """The `partitioned` listing a partition at a time: (images listed in it, its rows to process, in
    listing order).

    A file named more than once counts once, as last named. With a selection an image is done when
    its current row is for this very version (URI, size, version) and came from this model; an error
    counts as done unless it was transient (the store failed, not the file) or `retry_errors` asks
    for every error. An image listed without a version (a list file with no ETag, version or
    modification time column) is never done: nothing could tell that it was replaced.

    Every join holds the listed side and streams the earlier one, so a pass is sized by the listing
    alone: a night of a thousand images against a `current` of a hundred million reads `current`
    once. A listing of one partition meets `current` itself, filtered by the listed URIs (nothing is
    spilled, and only the rows of listed images are keyed); a longer one meets `current`'s done
    versions spilled into the same partitions."""
    con = duckdb.connect(config={"threads": 1})
    files = committed_files(output, "current") if selection else []
    if files and "://" in output:
        con.register_filesystem(filesystem(output)[0])
    spilled = _spill_done(con, files, selection, listed.count, scratch) if files and listed.count > 1 else None
    for index in range(listed.count):
        passes = -(-listed.rows_in(index) // PASS_ROWS) if listed.count > 1 else 1
        if spilled is not None:
            done = spilled.files(index)
            earlier = f"SELECT hi, lo, rest FROM read_parquet([{sql_strings(done)}])" if done else None
        else:
            holding = files_holding(con, files, f"SELECT image_uri FROM read_parquet([{sql_strings(listed.files(0))}])")
            earlier = (
                f"SELECT hi, lo, {rest_sql(1)} FROM "
                f"({_done_sql(con, holding, selection, 'image_uri IN (SELECT image_uri FROM listed)')})"
                if holding
                else None
            )
        for part in range(passes):
            yield _select(con, listed.files(index), earlier, f"rest % {passes} = {part}", selection)


def marks(listed: Partitions, output: str, folders: list[str]) -> Iterator[pa.Table]:
    """What the listing says of `current`'s rows, as (image_uri, gone) rows: gone where a row's image is
    under a folder the run listed whole (`folders`, each ending in '/') and was not listed; back
    (gone false) where a row marked gone was listed again. Joins that spill hold the listing."""
    files = committed_files(output, "current")
    if not files or not listed.rows or not (folders or _any_marked_gone(output)):
        return
    everything = sql_strings([path for index in range(listed.count) for path in listed.files(index)])
    under = " OR ".join(f"starts_with(image_uri, $folder{i})" for i in range(len(folders)))
    # back: the listing streams past the (few) rows marked gone; gone: only for folders listed whole,
    # where one side of the join (the larger spills) is every row under them
    back = f"""SELECT DISTINCT image_uri, false AS gone FROM read_parquet([{everything}])
               WHERE image_uri IN (SELECT image_uri FROM earlier WHERE deleted_at IS NOT NULL)"""
    gone = f"""SELECT image_uri, true AS gone FROM earlier
               ANTI JOIN (SELECT image_uri FROM read_parquet([{everything}])) USING (image_uri)
               WHERE deleted_at IS NULL AND ({under})"""
    with spilling_duckdb(output) as con:
        rows = con.sql(
            f"""WITH earlier AS (SELECT image_uri, deleted_at FROM ({scan(con, "current", files)}))
                           {back} {f"UNION ALL {gone}" if folders else ""}""",
            params={f"folder{i}": folder for i, folder in enumerate(folders)},
        )
        for batch in rows.to_arrow_reader(BATCH_ROWS):
            yield pa.Table.from_batches([batch])


def _any_marked_gone(output: str) -> bool:
    """Whether a row of `current` has a `deleted_at`, from the file statistics in its log (no file is
    read): a file with fewer nulls than rows holds one. Files written before the column have no
    statistics for it, and no marks."""
    actions = add_actions(open_table(output, "current"))
    if "null_count.deleted_at" not in actions.column_names:
        return False
    nulls = actions.column("null_count.deleted_at").fill_null(actions.column("num_records"))
    return pc.any(pc.less(nulls, actions.column("num_records"))).as_py() or False


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


def _done_sql(con: duckdb.DuckDBPyConnection, files: list[str], selection: Selection, where: str) -> str:
    """SQL of `current`'s versions that count as done for this model (of the rows `where` keeps): each
    row's image_uri and its version as a 128-bit key (two 64-bit halves: an unsigned 128-bit number
    does not survive Arrow)."""
    # an error row counts as done unless the store failed (transient) or every error is retried
    status = "AND status = 'ok'" if selection.retry_errors else "AND coalesce(error_kind, '') <> 'transient'"
    return f"""
        SELECT image_uri, {VERSION_KEY} FROM ({scan(con, "current", files)})
        WHERE model_sha256 = $model {status} AND {where}"""


def _spill_done(
    con: duckdb.DuckDBPyConnection, files: list[str], selection: Selection, count: int, scratch: str
) -> Partitions:
    """`current`'s done versions cut into the listing's partitions."""
    reader = con.sql(
        f"SELECT hi, lo, {partition_sql(count)} FROM ({_done_sql(con, files, selection, 'true')})",
        params={"model": selection.model_sha256},
    ).to_arrow_reader(BATCH_ROWS)
    done = Partitions(scratch, "done", count)
    for batch in reader:
        done.add(pa.Table.from_batches([batch]))
    return done


def _select(
    con: duckdb.DuckDBPyConnection, listed: list[str], earlier: str | None, rows: str, selection: Selection | None
) -> tuple[int, pa.Table]:
    """One pass over a partition (its `rows`): each URI as last named, and whether its version is
    done. Keys are a 128-bit hash (md5) of the version, so a pass's join holds 16 bytes per listed row;
    an accidental collision (which would skip one image) has odds near 1e-24 even for 10 million
    images against 10 million earlier rows. The earlier rows only stream through a semi join that
    holds the pass's listed keys."""
    if earlier is None:
        earlier = "SELECT 0::UBIGINT AS hi, 0::UBIGINT AS lo, 0::UBIGINT AS rest WHERE false"
    found = con.sql(
        f"""
        WITH listed AS (SELECT *, {VERSION_KEY} FROM read_parquet([{sql_strings(listed)}]) WHERE {rows}
                        QUALIFY row_number() OVER (PARTITION BY image_uri ORDER BY position DESC) = 1),
             done AS (SELECT DISTINCT hi, lo FROM ({earlier}) WHERE {rows} AND (hi, lo) IN (SELECT hi, lo FROM listed))
        SELECT image_uri, source_size, source_version, source_modified,
               source_version <> '' AND done.hi IS NOT NULL AS done
        FROM listed LEFT JOIN done USING (hi, lo)
        ORDER BY position""",
        params={"model": selection.model_sha256} if selection and "$model" in earlier else None,
    ).to_arrow_table()
    todo = found.filter(pc.invert(found.column("done"))).drop_columns(["done"])
    return found.num_rows, todo.cast(LISTING_SCHEMA)


VERSION = "image_uri || chr(0) || source_size::VARCHAR || chr(0) || source_version"
VERSION_KEY = f"md5_number_upper({VERSION}) AS hi, md5_number_lower({VERSION}) AS lo"
"""An image version (URI, size, version) as a 128-bit number, in two columns."""
