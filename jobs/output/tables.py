"""The output layout: four Delta Lake tables under one root, and the protocol that commits a run.

    OUTPUT/images       one row per image per run, partitioned by run_id; per-class statistics
                        nested in `classes`. A run's commit to this table is THE commit.
    OUTPUT/class_stats  the same statistics flat, one row per image and class, partitioned by run_id
    OUTPUT/current      per image URI, the row of its newest image version (ties: the later commit)
    OUTPUT/runs         one row per committed run: counts, model, timings

Workers write Parquet parts straight into the partition folders of `images` and `class_stats`;
no reader sees them until the driver lists them in a Delta commit. A run is committed to
`images` first, in one transaction that also records the run (commit metadata) and claims the
run id (a Delta app transaction, so a run id can commit once, whatever races). The other three
tables follow from that commit and can be completed by anyone who finds them behind: each step
is idempotent and marked by the same app transaction. So `images` holds exactly the committed
runs; `class_stats`, `current` and `runs` never hold a run that `images` does not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from jobs.common.errors import UserError
from jobs.output.columns import (
    CLASS_COLUMNS,
    CLASS_STATS_COLUMNS,
    CURRENT_COLUMNS,
    CURRENT_RUN_COLUMNS,
    IMAGE_COLUMNS,
    RUN_ID,
    schema,
)
from jobs.output.leases import check_run_id
from jobs.output.records import RUNS_SCHEMA, RunRecord
from jobs.storage.files import filesystem, join
from jobs.storage.settings import arrow_filesystem, storage_options

TABLES = ("images", "class_stats", "current", "runs")
PARTITIONED = ("images", "class_stats")
RUN_KEY = "unet_segment.run"
"""Commit-metadata key under which a run's record rides in its `images` commit."""
CLASS_STATS_PARTS = "class_stats_parts"
"""Key of the run record, in its `images` commit only: [name, bytes, rows] of each class_stats part,
the facts a roll-forward commits from."""
WATERMARK_LAG = 100
"""`images` commits a run start reads past the watermark before it moves it (see `complete_pending`)."""
CURRENT_BATCH_ROWS = 65_536
"""Rows per Arrow batch streamed into `current`: bounds the driver's memory on huge runs."""
COMMIT_ATTEMPTS = 12
PART_NAME = re.compile(r"part-[0-9a-f]{32}\.parquet")
"""The name of every part file the job writes (a fresh uuid), and so of every file a commit's facts may name."""

IMAGES_FILE_SCHEMA = schema(IMAGE_COLUMNS)
"""What a worker writes into an `images` part; `run_id` lives in the partition path."""
CLASS_STATS_FILE_SCHEMA = schema(CLASS_STATS_COLUMNS)
SCHEMAS = {
    "images": IMAGES_FILE_SCHEMA.append(RUN_ID.field),
    "class_stats": CLASS_STATS_FILE_SCHEMA.append(RUN_ID.field),
    "current": schema(CURRENT_COLUMNS),
    "runs": RUNS_SCHEMA,
}
EPOCH = "TIMESTAMP '1970-01-01T00:00:00Z'"
NEWER = (
    f"coalesce(s.listed_at, {EPOCH}) > coalesce(t.listed_at, {EPOCH}) OR "
    f"(coalesce(s.listed_at, {EPOCH}) = coalesce(t.listed_at, {EPOCH}) AND s.commit_version > t.commit_version)"
)
"""When a run's row replaces the current one: its run listed the file later, so it saw the version the
file has now, even when that version is older (a file restored from a backup); a run that listed
earlier and committed later does not move `current` back. Rows of runs before `listed_at` existed
read it as null: any later listing replaces them."""
GONE = f"s.deleted_at IS NOT NULL AND t.deleted_at IS NULL AND s.listed_at > coalesce(t.listed_at, {EPOCH})"
BACK = "s.deleted_at IS NULL AND t.deleted_at IS NOT NULL AND s.listed_at > t.deleted_at"
"""When a run's listing marks a `current` row deleted (its file was not under a folder the run listed
whole, and the row came from an earlier listing) or present again (listed after it was marked)."""
PLANS = "_plans"
"""The folder of the runs' plans under the root (`jobs.output.plans`)."""


def marks_uri(output: str, run_id: str) -> str:
    """The run's deletion marks, beside its plan: URIs its listing found gone from, or back in, storage."""
    return join(output, PLANS, run_id, "marks.parquet")


@dataclass(frozen=True)
class Part:
    """One part file a worker wrote: the same name in `images` and in `class_stats`."""

    name: str
    images_bytes: int
    class_stats_bytes: int
    rows: int
    class_rows: int


def nested_classes(flat: pa.Table, ok: np.ndarray, classes: int) -> pa.Array:
    """The `images.classes` column from flat class_stats rows (`classes` rows per ok image, in
    image order); null for an error row."""
    offsets = np.concatenate([[0], np.cumsum(np.where(ok, classes, 0))]).astype(np.int32)
    values = pa.StructArray.from_arrays(
        [flat.column(c.name).combine_chunks() for c in CLASS_COLUMNS], fields=list(schema(CLASS_COLUMNS))
    )
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~ok))


def table_uri(output: str, table: str) -> str:
    return join(output, table)


def delta_uri(output: str, table: str) -> str:
    """The URI delta-rs takes: absolute on local disk, s3:// as is (s3a:// is the same store)."""
    uri = table_uri(output, table)
    return (
        "s3://" + uri[len("s3a://") :] if uri.startswith("s3a://") else (uri if "://" in uri else os.path.abspath(uri))
    )


def open_table(output: str, table: str):
    """The Delta table, or None where it was never created."""
    from deltalake import DeltaTable

    uri, options = delta_uri(output, table), storage_options(output)
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    return DeltaTable(uri, storage_options=options)


def check_layout(output: str) -> None:
    """Results of the earlier layout (JSON manifests under runs/) are refused with the way out."""
    fs, folder = filesystem(join(output, "runs"))
    if fs.exists(folder) and any(p.endswith(".json") for p in fs.ls(folder, detail=False)):
        raise UserError(
            f"{output} holds results in the earlier layout (runs/*.json manifests); convert it with "
            f"`python jobs/maintain.py --output {output} --convert-legacy`"
        )


def ensure_tables(output: str, converting: bool = False) -> None:
    """Create whichever tables are missing; two runs racing to create one both end up with it."""
    from deltalake import write_deltalake
    from deltalake.exceptions import DeltaError

    if not converting:
        check_layout(output)
    for table in TABLES:
        existing = open_table(output, table)
        if existing is not None:
            if missing_columns(existing, SCHEMAS[table]):
                add_missing_columns(output, table)
            continue
        try:
            write_deltalake(
                delta_uri(output, table),
                SCHEMAS[table].empty_table(),
                mode="append",
                partition_by=["run_id"] if table in PARTITIONED else None,
                storage_options=storage_options(output),
            )
        except DeltaError:
            if open_table(output, table) is None:
                raise


def missing_columns(table, wanted: pa.Schema) -> list:
    """Today's columns that a table written by an earlier version lacks, in Delta's types (whatever
    Arrow type a column has, nested ones included)."""
    from deltalake import Schema

    have = {field.name for field in table.schema().fields}
    missing = [field for field in wanted if field.name not in have]
    return Schema.from_arrow(pa.schema(missing)).fields if missing else []


def add_missing_columns(output: str, table: str) -> None:
    """Columns are only ever added, so older files read them as null and every reader keeps working;
    a concurrent run adding them first is a conflict, retried against the table it left."""

    def attempt() -> None:
        current = open_table(output, table)
        missing = missing_columns(current, SCHEMAS[table])
        if missing:
            current.alter.add_columns(missing)

    retry_conflicts(attempt)


def require_tables(output: str) -> None:
    """Readers: a clear line where there is nothing to read."""
    fs, root = filesystem(output)
    if not fs.exists(root):
        raise UserError(f"{output}: no such output folder")
    check_layout(output)
    if open_table(output, "images") is None:
        raise UserError(f"{output}: no results here yet (no images table)")


def commit_run(output: str, record: RunRecord, parts: list[Part], fence: Callable[[], None] = lambda: None) -> int:
    """Commit a run: its `images` transaction, then the tables that follow from it. Returns the
    `images` version that committed it (the run's place in commit order).

    The run id is checked and committed on one snapshot, with `fence` (the attempt's lease check)
    between the two: delta-rs refuses a repeated app id only when a conflict makes it retry, so an
    attempt that stalls after its fence and commits after a successor conflicts with that commit
    and is refused, where a snapshot loaded later would have let it commit the run twice."""
    from deltalake import CommitProperties, Transaction
    from deltalake.exceptions import CommitFailedError

    run_id = record.run_id
    check_parts_exist(output, run_id, parts)
    table = open_table(output, "images")
    if table.transaction_version(run_id) is not None or _committed_empty(output, run_id):
        raise _already_committed(output, run_id)
    class_stats = [(p.name, p.class_stats_bytes, p.class_rows) for p in parts]
    facts = {**record.commit_metadata(), CLASS_STATS_PARTS: class_stats}
    properties = CommitProperties(
        custom_metadata={RUN_KEY: json.dumps(facts, default=str)},
        app_transactions=[Transaction(run_id, 1)],
        max_commit_retries=COMMIT_ATTEMPTS,
    )
    actions = [_add_action(run_id, p.name, p.images_bytes, p.rows) for p in parts]
    fence()
    try:
        table.create_write_transaction(
            actions, mode="append", schema=table.schema(), partition_by=["run_id"], commit_properties=properties
        )
    except CommitFailedError as exc:
        if open_table(output, "images").transaction_version(run_id) is not None:
            raise UserError(f"run {run_id} was committed by another attempt meanwhile; this one is discarded") from exc
        raise
    version = _commit_version(open_table(output, "images"), run_id)
    _complete(output, record, version, class_stats)
    return version


def check_parts_exist(output: str, run_id: str, parts: list[Part]) -> None:
    """Never commit a part that is gone (a vacuum that judged the run dead, a hand): readers would
    fail on every query from then on. One listing per table, not a request per part."""
    for table in PARTITIONED:
        present = _present(output, table, run_id)
        missing = [part.name for part in parts if part.name not in present]
        if missing:
            raise UserError(
                f"run {run_id}: {len(missing)} of its {len(parts)} {table} parts are gone from storage "
                f"(e.g. {missing[0]}); not committing, nothing is visible: run the same run id again"
            )


def _present(output: str, table: str, run_id: str) -> set[str]:
    """The names of the files in the run's partition folder of `table`, as storage lists them now."""
    fs, folder = filesystem(join(output, table, f"run_id={run_id}"))
    try:
        return {path.rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False, refresh=True)}
    except FileNotFoundError:
        return set()


def check_not_committed(output: str, run_id: str) -> None:
    """A run id commits once, empty runs included: those commit only their `runs` row, under the same
    app transaction."""
    if is_committed(output, run_id):
        raise _already_committed(output, run_id)


def _already_committed(output: str, run_id: str) -> UserError:
    return UserError(f"run {run_id} is already committed in {output}; pick another run id", "run_id")


def is_committed(output: str, run_id: str) -> bool:
    return open_table(output, "images").transaction_version(run_id) is not None or _committed_empty(output, run_id)


def _committed_empty(output: str, run_id: str) -> bool:
    return open_table(output, "runs").transaction_version(run_id) is not None


def complete_pending(output: str, lag: int = WATERMARK_LAG) -> list[str]:
    """Finish the runs whose `images` commit went through but whose driver died before the other
    tables caught up (rare: the seconds between two commits). Returns their ids.

    Only the `images` commits after the watermark are read: `runs` records, as the version of its
    COMPLETE_THROUGH app transaction, an `images` version through which every run is complete, so a
    run start reads what was committed since, not the root's history. The watermark moves (a commit
    to `runs` of nothing else) once it is `lag` commits behind: maintenance moves it whenever it is
    behind, a run start only past WATERMARK_LAG, so most runs write nothing here."""
    images, runs = open_table(output, "images"), open_table(output, "runs")
    if images is None or runs is None:
        return []
    through, newest = _complete_through(runs), images.version()
    if newest <= through:
        return []
    records = _run_records(images, since=through)
    pending = sorted(run_id for run_id in records if runs.transaction_version(run_id) is None)
    for run_id in pending:
        version, facts = records[run_id]
        _complete(output, RunRecord.read(facts), version, _class_stats_parts(output, images, facts))
    if newest - through >= lag:
        retry_conflicts(lambda: _advance_complete_through(output, newest))
    return pending


COMPLETE_THROUGH = "unet_segment.complete_through"
"""App id of `runs` whose version is an `images` version through which every run is complete."""


def _complete_through(runs) -> int:
    through = runs.transaction_version(COMPLETE_THROUGH)
    return -1 if through is None else through


def _advance_complete_through(output: str, version: int) -> None:
    """Raise the watermark to `version` (never lower it): a commit of nothing but the app transaction,
    landing only on the version it read, as every write to these tables does."""
    from deltalake import CommitProperties, Transaction

    runs = open_table(output, "runs")
    if _complete_through(runs) >= version:
        return
    runs.create_write_transaction(
        [],
        mode="append",
        schema=runs.schema(),
        partition_by=None,
        commit_properties=CommitProperties(
            app_transactions=[Transaction(COMPLETE_THROUGH, version)], max_commit_retries=0
        ),
    )


def _class_stats_parts(output: str, images, facts: dict) -> list[tuple[str, int, int]]:
    """The run's class_stats parts as its `images` commit recorded them: nothing done to the tables
    since (a compaction renames every file) changes them. Runs committed before the commit carried
    them are read from their `images` files, which compaction had not touched before this version."""
    if CLASS_STATS_PARTS in facts:
        parts = [tuple(part) for part in facts[CLASS_STATS_PARTS]]
        if not all(len(part) == 3 and isinstance(part[0], str) and PART_NAME.fullmatch(part[0]) for part in parts):
            raise UserError(
                f"run {facts['run_id']}: its images commit names class_stats parts that this job "
                "never writes; the store was written by something other than this job"
            )
        return parts
    names = sorted(p.rsplit("/", 1)[-1] for p in _run_files(images, facts["run_id"]))
    return [_class_stats_file(output, facts["run_id"], name) for name in names]


def _complete(output: str, record: RunRecord, version: int, class_stats_files: list[tuple[str, int, int]]) -> None:
    """Each step checks the run's app transaction in a freshly loaded table and retries on a conflict
    (our retry, not delta-rs': it reloads the table and checks the app transaction again), so any
    number of processes completing one run at once all succeed, and each table takes it once."""
    run_id = record.run_id
    retry_conflicts(lambda: _commit_class_stats(output, run_id, class_stats_files))
    _update_current(output, run_id, version, record.listed_at, _marks_of(output, record))
    retry_conflicts(lambda: _append_run(output, record, version))


def _marks_of(output: str, record: RunRecord) -> str | None:
    """The run's deletion marks file, where its record says it has one and it is still there."""
    if not record.marks:
        return None
    uri = marks_uri(output, record.run_id)
    fs, path = filesystem(uri)
    if fs.exists(path):
        return uri
    print(
        f"run {record.run_id}: its deletion marks ({uri}) are gone; current is brought up to the run "
        "without them, the next listing of those folders marks them",
        file=sys.stderr,
        flush=True,
    )
    return None


def _commit_class_stats(output: str, run_id: str, files: list[tuple[str, int, int]]) -> None:
    from deltalake import CommitProperties, Transaction

    table = open_table(output, "class_stats")
    if table.transaction_version(run_id) is not None:
        return
    present = _present(output, "class_stats", run_id)
    gone = [name for name, _, _ in files if name not in present]
    if gone:  # a commit listing a missing file would fail every reader of the table from then on
        print(
            f"run {run_id}: {len(gone)} of the {len(files)} class_stats parts its images commit names are gone "
            f"from storage (e.g. {gone[0]}); committing the rest, those images have no class_stats rows",
            file=sys.stderr,
            flush=True,
        )
    actions = [_add_action(run_id, name, size, rows) for name, size, rows in files if name in present]
    table.create_write_transaction(
        actions,
        mode="append",
        schema=table.schema(),
        partition_by=["run_id"],
        commit_properties=CommitProperties(app_transactions=[Transaction(run_id, 1)], max_commit_retries=0),
    )


def _update_current(output: str, run_id: str, version: int, listed_at: str | None, marks: str | None) -> None:
    """Bring `current` up to the run at a cost that grows with the run, not with the table: the run's
    new images are appended (no existing file read or rewritten), only the images it updates go
    through one merge, which rewrites each `current` file that holds one at most once. Which images
    are new is decided from the key column alone."""
    retry_conflicts(lambda: _current_attempt(output, run_id, version, listed_at, marks))


def _current_attempt(output: str, run_id: str, version: int, listed_at: str | None, marks: str | None) -> None:
    """One try against a freshly loaded `current`. Every write here commits with no delta-rs retry, so
    it lands only on the very version it read (a compare-and-swap on the table version): of two
    processes that judged the same images new, one commits and the other tries again against the
    table that now holds them, and no image gets two rows. (delta-rs' own retry would let a blind
    append through.)"""
    from deltalake import CommitProperties, Transaction, write_deltalake

    table = open_table(output, "current")
    if table.transaction_version(run_id) is not None:
        return
    files = [u.removeprefix("file://") for u in table.file_uris()]
    con, run_rows = _stage_run(output, run_id, version, listed_at, files, marks)
    done = [Transaction(run_id, 1)]
    updated_rows, marked = con.execute(
        "SELECT (SELECT count(*) FROM updated), (SELECT count(*) FROM marks)"
    ).fetchall()[0]
    new_rows = run_rows - updated_rows  # a run lists each URI once; were one named twice, this only over-counts
    last = None if new_rows else done
    if updated_rows + marked > REPLACE_MAX:
        _merge(table, con, last)
        committed = True
    else:
        committed = bool(updated_rows + marked) and _replace(table, con, files, last)
    if new_rows or not committed:
        inserts = _typed(con.sql("SELECT * FROM run_rows ANTI JOIN updated USING (image_uri)"))
        write_deltalake(
            table,
            inserts,
            mode="append",
            commit_properties=CommitProperties(app_transactions=done, max_commit_retries=0),
        )


REPLACE_MAX = 10_000
"""Updated and marked images up to which a run replaces their rows by key (a Delta replaceWhere, which
finds and rewrites only the files holding them: 0.5 s for 100 keys among 20 million rows); above it,
one merge (which reads every file of `current` in their key range: 17 s at 20 million) costs less
than a predicate naming that many keys."""


def _replace(table, con: duckdb.DuckDBPyConnection, files: list[str], transactions: list | None) -> bool:
    """Replace the rows of the updated images that the run's rows are newer than, and of the images
    its marks apply to, in one commit on the version read; False where nothing was to change. The
    same rules as the merge's, evaluated by DuckDB on the rows `current` holds for those keys."""
    from deltalake import CommitProperties, write_deltalake

    keys = "SELECT image_uri FROM updated UNION ALL SELECT image_uri FROM marks"
    con.execute(
        f"CREATE TEMP TABLE existing AS SELECT * FROM ({scan(con, 'current', files_holding(con, files, keys))}) "
        f"WHERE image_uri IN ({keys})"
    )
    rows = con.sql(f"""
        SELECT s.* FROM run_rows s JOIN existing t ON s.image_uri = t.image_uri WHERE {NEWER}
        UNION ALL BY NAME
        SELECT t.* REPLACE (s.deleted_at AS deleted_at) FROM marks s JOIN existing t ON s.image_uri = t.image_uri
        WHERE ({GONE}) OR ({BACK})""").to_arrow_table()
    if not rows.num_rows:
        return False
    keys = sql_strings(rows.column("image_uri").to_pylist())
    write_deltalake(
        table,
        rows.select(SCHEMAS["current"].names).cast(SCHEMAS["current"]),
        mode="overwrite",
        predicate=f"image_uri IN ({keys})",
        commit_properties=CommitProperties(app_transactions=transactions, max_commit_retries=0),
    )
    return True


def _merge(table, con: duckdb.DuckDBPyConnection, transactions: list | None) -> None:
    """One merge of the run's updated rows and its marks: for a run that changes many images."""
    from deltalake import CommitProperties

    bounds = con.execute(
        "SELECT min(image_uri), max(image_uri) FROM (SELECT image_uri FROM updated UNION ALL "
        "SELECT image_uri FROM marks)"
    ).fetchall()[0]
    source = _typed(
        con.sql(
            "SELECT *, 'run' AS kind FROM run_rows SEMI JOIN updated USING (image_uri) "
            "UNION ALL BY NAME SELECT *, 'mark' AS kind FROM marks"
        ),
        MERGE_SOURCE,
    )
    (
        table.merge(
            source,
            _merge_predicate(*bounds),
            source_alias="s",
            target_alias="t",
            commit_properties=CommitProperties(app_transactions=transactions, max_commit_retries=0),
        )
        .when_matched_update(
            {name: f"s.{name}" for name in SCHEMAS["current"].names}, predicate=f"s.kind = 'run' AND ({NEWER})"
        )
        .when_matched_update({"deleted_at": "s.deleted_at"}, predicate=f"s.kind = 'mark' AND (({GONE}) OR ({BACK}))")
        .execute()
    )


def _merge_predicate(low: str, high: str) -> str:
    """The merge's match, bounded by the updated images' key range: delta-rs streams the source, which
    turns off its own pruning by the source's keys, so without the bounds every file of `current` is
    read; with them a file whose image_uri statistics lie outside the range is skipped unread."""
    return f"t.image_uri = s.image_uri AND t.image_uri >= {sql_strings([low])} AND t.image_uri <= {sql_strings([high])}"


def _stage_run(
    output: str, run_id: str, version: int, listed_at: str | None, current_files: list[str], marks: str | None
):
    """A DuckDB connection with `run_rows` (a view: the run's `images` rows as `current` rows, read
    from its committed files), `updated` (a table: those of its image URIs that `current` holds,
    found by reading that one column of `current`) and `marks` (a view: the run's deletion marks as
    `current` rows, less the images it has rows for), and how many rows the run has."""
    con = duckdb.connect()
    if "://" in output:
        con.register_filesystem(filesystem(output)[0])
    run_files = [
        uri.removeprefix("file://")
        for uri in open_table(output, "images").file_uris(partition_filters=[("run_id", "=", run_id)])
    ]
    from_run = {column.name for column in CURRENT_RUN_COLUMNS}
    columns = ", ".join(f'"{n}"' for n in SCHEMAS["current"].names if n not in from_run)
    listed = f"TIMESTAMPTZ '{_checked_time(run_id, listed_at).isoformat()}'" if listed_at else "NULL::TIMESTAMPTZ"
    con.execute(
        f"CREATE VIEW run_rows AS SELECT {columns}, {int(version)}::BIGINT AS commit_version, "
        f"{listed} AS listed_at, NULL::TIMESTAMPTZ AS deleted_at FROM ({scan(con, 'images', run_files)})"
    )
    marked = (
        f"SELECT image_uri, gone FROM read_parquet([{sql_strings([marks])}]) ANTI JOIN run_rows USING (image_uri)"
        if marks and listed_at
        else "SELECT NULL::VARCHAR AS image_uri, NULL::BOOLEAN AS gone WHERE false"
    )
    con.execute(
        f"CREATE VIEW marks AS SELECT image_uri, {int(version)}::BIGINT AS commit_version, "
        f"{listed} AS listed_at, CASE WHEN gone THEN {listed} END AS deleted_at FROM ({marked})"
    )
    rows, low, high = con.execute("SELECT count(*), min(image_uri), max(image_uri) FROM run_rows").fetchall()[0]
    # the run's key range: row groups of `current` entirely outside it are skipped unread (a collection
    # whose new images sort after the old, by date or by number, reads nothing of `current` at all)
    known = (
        f"SELECT image_uri FROM read_parquet([{sql_strings(current_files)}]) WHERE image_uri BETWEEN $low AND $high"
        if current_files
        else "SELECT NULL::VARCHAR AS image_uri WHERE false"
    )
    con.execute(
        f"CREATE TEMP TABLE updated AS SELECT DISTINCT image_uri FROM run_rows SEMI JOIN ({known}) USING (image_uri)",
        {"low": low, "high": high} if current_files else {},
    )
    return con, rows


def _checked_time(run_id: str, value: str) -> dt.datetime:
    """A time stamp read from the store (a plan, a commit's metadata), parsed before it goes near SQL:
    whoever can write under the root must not be able to make the driver run SQL of their choosing."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise UserError(
            f"run {run_id}: its record's listed_at {str(value)[:80]!r} is not a time stamp with a time "
            "zone; the store was written by something other than this job"
        )
    return parsed


MERGE_SOURCE = SCHEMAS["current"].append(pa.field("kind", pa.string()))
"""A merge into `current`: rows of the run (`kind` 'run') and its deletion marks ('mark')."""


def _typed(relation: duckdb.DuckDBPyRelation, schema: pa.Schema = SCHEMAS["current"]) -> pa.RecordBatchReader:
    """A DuckDB query streamed as `current` rows, in the table's own types."""
    batches = relation.to_arrow_reader(CURRENT_BATCH_ROWS)
    return pa.RecordBatchReader.from_batches(schema, (batch.cast(schema) for batch in batches))


def files_holding(con: duckdb.DuckDBPyConnection, files: list[str], keys: str) -> list[str]:
    """Those of `current`'s files that hold a row of an image URI that the query `keys` returns, found
    by reading their one key column: reading the matching rows from these alone costs a quarter of
    reading every column of every file to filter them (20 million rows: 0.6 s against 2.6)."""
    if not files:
        return []
    found = con.execute(
        f"SELECT DISTINCT filename FROM read_parquet([{sql_strings(files)}], filename = true) "
        f"WHERE image_uri IN ({keys})"
    ).fetchall()
    return sorted(name for (name,) in found)


def sql_strings(files: list[str]) -> str:
    """File URIs as a list of SQL string literals (quotes doubled): DuckDB's read_parquet([...])."""
    return ", ".join("'" + uri.replace("'", "''") + "'" for uri in files)


def _append_run(output: str, record: RunRecord, version: int | None, fence: Callable[[], None] = lambda: None) -> None:
    from deltalake import CommitProperties, Transaction, write_deltalake

    table = open_table(output, "runs")
    run_id = record.run_id
    if table.transaction_version(run_id) is not None:
        return
    fence()
    write_deltalake(
        table,
        pa.Table.from_pylist([record.with_version(version).row()], schema=SCHEMAS["runs"]),
        mode="append",
        commit_properties=CommitProperties(app_transactions=[Transaction(run_id, 1)], max_commit_retries=0),
    )


def append_empty_run(output: str, record: RunRecord, fence: Callable[[], None] = lambda: None) -> None:
    """A run that had nothing to process (an incremental night with no new images) is a `runs` row,
    checked and committed on one snapshot of `runs` as `commit_run` does with `images`, and then the
    deletion marks its listing found."""
    check_not_committed(output, record.run_id)
    retry_conflicts(lambda: _append_run(output, record, None, fence))
    marks = _marks_of(output, record)
    if marks:  # after the run's row: marks of a run that never committed would be the only trace of it
        _update_current(output, record.run_id, 0, record.listed_at, marks)


def retry_conflicts(attempt) -> None:
    """Run a Delta operation that conflicts with concurrent writers (merge, compaction) until it
    commits: each attempt reloads the table and redoes its work."""
    from deltalake.exceptions import CommitFailedError

    for tries in range(COMMIT_ATTEMPTS):
        try:
            return attempt()
        except CommitFailedError:
            if tries == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.05, 0.2) * 2 ** min(tries, 5))


def _class_stats_file(output: str, run_id: str, name: str) -> tuple[str, int, int]:
    """Size and row count of a class_stats part, read from storage (the roll-forward path)."""
    fs, path = filesystem(join(output, "class_stats", f"run_id={run_id}", name))
    with fs.open(path, "rb") as handle:
        rows = pq.ParquetFile(handle).metadata.num_rows
    return name, fs.size(path), rows


def _add_action(run_id: str, name: str, size: int, rows: int):
    from deltalake.transaction import AddAction

    stats = json.dumps({"numRecords": rows})
    return AddAction(f"run_id={run_id}/{name}", size, {"run_id": run_id}, int(time.time() * 1000), True, stats)


def add_actions(table) -> pa.Table:
    """The table's live files (path, size, partition values, ...) as an Arrow table."""
    return pa.table(table.get_add_actions(flatten=True))


def committed_run_ids(output: str) -> list[str]:
    """Run ids with rows in `images`: every run whose commit went through, empty runs aside."""
    return _partition_run_ids(open_table(output, "images"))


def _partition_run_ids(table) -> list[str]:
    return pc.unique(add_actions(table).column("partition.run_id")).to_pylist()


def _run_files(table, run_id: str) -> list[str]:
    actions = add_actions(table)
    return actions.filter(pc.equal(actions.column("partition.run_id"), run_id)).column("path").to_pylist()


def _run_records(images, since: int = -1) -> dict[str, tuple[int, dict]]:
    """The run records that `images` commits after version `since` carry, by run id, with the version
    that committed each."""
    records = {}
    for entry in images.history(limit=images.version() - since):
        if RUN_KEY in entry:
            record = json.loads(entry[RUN_KEY])
            check_run_id(str(record.get("run_id")))
            records.setdefault(record["run_id"], (entry["version"], record))
    return records


def _commit_version(images, run_id: str) -> int:
    for entry in images.history(limit=64):
        if RUN_KEY in entry and json.loads(entry[RUN_KEY])["run_id"] == run_id:
            return entry["version"]
    return _run_records(images)[run_id][0]


def committed_files(output: str, table: str) -> list[str]:
    """The table's committed Parquet files as URIs (local paths for local tables), straight from
    the Delta log: the list any reader must scan, and nothing else."""
    delta = open_table(output, table)
    if delta is None:
        return []
    return [uri.removeprefix("file://") for uri in delta.file_uris()]


def committed_dataset(output: str, table: str) -> pads.Dataset:
    """A pyarrow dataset over exactly the table's committed files (filter with `scan_field`).

    Built from the log's file list with pyarrow's own filesystems: scanning through delta-rs'
    `to_pyarrow_dataset` aborts the process at exit (deltalake 1.6 with pyarrow 26)."""
    files = committed_files(output, table)
    if not files:
        return pads.dataset(SCHEMAS[table].empty_table())
    fs, root = arrow_filesystem(table_uri(output, table))
    paths = [uri.split("://", 1)[1] if "://" in uri else uri for uri in files]
    partitioned = table in PARTITIONED
    return pads.dataset(
        paths,
        schema=SCHEMAS[table],
        filesystem=fs,
        format="parquet",
        partitioning=pads.partitioning(pa.schema([RUN_ID.field]), flavor="hive") if partitioned else None,
        partition_base_dir=root if partitioned else None,
    )


def scan(con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> str:
    """SQL reading a table's committed files, columns in the table's order (an empty table has none).

    Files written before a column was added lack it: the union by name with an empty table of
    today's schema reads it as null there."""
    con.register(f"{table}_empty", SCHEMAS[table].empty_table())
    if not files:
        return f"SELECT * FROM {table}_empty"
    listed = sql_strings(files)
    hive = ", hive_partitioning = true, hive_types = {'run_id': 'VARCHAR'}" if table in PARTITIONED else ""
    columns = ", ".join(f'"{name}"' for name in SCHEMAS[table].names)
    return (
        f"SELECT {columns} FROM (SELECT * FROM {table}_empty UNION ALL BY NAME "
        f"SELECT * FROM read_parquet([{listed}]{hive}, union_by_name = true))"
    )


def scan_field(name: str) -> pc.Expression:
    """A column of a `committed_dataset` for a scan filter. Files that delta-rs writes (merge,
    compaction) record text as string_view, and pyarrow's statistics pruning has no kernels for
    it; comparing the column cast to its declared type reads those files correctly. Partition
    columns (`run_id` of images and class_stats) need no cast and keep partition pruning."""
    kind = next(s.field(name).type for s in SCHEMAS.values() if name in s.names)
    return pc.field(name).cast(kind)
