"""A run's plan: the images it is to process, fixed once per run id.

The first attempt of a run writes its plan (the listing after `--incremental` selection) under
`OUTPUT/_plans/<run_id>/` before it processes anything: Parquet shards, then `plan.json`, written
last, which makes the plan whole. An attempt that finds a whole plan takes it as it is, whatever the
store or the flags say now, so a resumed run processes exactly the set its first attempt chose,
less what its kept parts already hold. The commit removes the plan; until then `query.py live`
reads its counts.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import tempfile
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.common.errors import UserError
from jobs.output.incremental import Selection, marks, partitioned, selected
from jobs.output.spill import spilling_duckdb
from jobs.output.tables import PLANS, marks_uri, sql_strings
from jobs.storage.files import filesystem, join, protocol_of
from jobs.storage.listing import LISTING_SCHEMA, listing_memory

FOLDER = PLANS
MARKS_SCHEMA = pa.schema([("image_uri", pa.string()), ("gone", pa.bool_())])
SHARD_ROWS = 1 << 20
"""Listing rows per plan shard."""
MAX_BLOCKS = 4096
"""Blocks a run's dataset starts from at most (more rows make larger blocks)."""
ROW_GROUP_ROWS = (64, 8192)
"""Bounds of a shard's row group size."""
PIECE = pa.schema(
    [
        ("shard", pa.string()),
        ("written", pa.string()),
        ("row_group", pa.int64()),
        ("start", pa.int64()),
        ("rows", pa.int64()),
    ]
)
"""A place in a todo's shards that a read task reads (`blocks`)."""


@dataclass(frozen=True)
class Plan:
    """What a run's first attempt decided, in counts: the rows themselves stay in the shards."""

    run_id: str
    inputs: int
    """Images listed."""
    skipped: int
    """Of those, already done by this model (`--incremental`)."""
    planned: int
    listed_at: str
    """When the listing began, by the store's clock: orders image versions in `current`."""
    model_sha256: str
    sources: list[str]
    """The --input arguments it listed."""
    shards: int
    settings: dict = field(default_factory=dict)
    """The flags that shape each image's result, as the first attempt was given them (flag -> value):
    a resume that asks for others would mix two settings in one run. Empty in plans written before."""
    gone: int = 0
    """Images of `current` under a folder listed whole that the listing did not find (`marks_uri`)."""
    back: int = 0
    """Images of `current` marked gone that the listing found again."""


def plan_folder(output: str, run_id: str) -> str:
    return join(output, FOLDER, run_id)


def load_plan(output: str, run_id: str) -> Plan | None:
    """The run id's whole plan, or None where no attempt finished writing one."""
    fs, path = filesystem(join(plan_folder(output, run_id), "plan.json"))
    try:
        text = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return _checked_plan(run_id, text, path)


PLAN_TYPES = {
    "run_id": str,
    "inputs": int,
    "skipped": int,
    "planned": int,
    "listed_at": str,
    "model_sha256": str,
    "sources": list,
    "shards": int,
    "settings": dict,
    "gone": int,
    "back": int,
}
"""What each field of plan.json must be: read back from the store, it reaches SQL and the commit."""


LATER_FIELDS = {"settings": {}, "gone": 0, "back": 0}
"""Fields that plans written by earlier versions lack, with the value they mean there."""


def _checked_plan(run_id: str, text: bytes, path: str) -> Plan:
    """The plan, or one line saying which field is not what this job writes (a plan written by hand, or by
    someone who can write under the root and would have the driver run SQL of their choosing)."""

    def refuse(field: str) -> UserError:
        return UserError(
            f"run {run_id}: its plan {path} is not one this job wrote (field {field}); remove its "
            "folder to plan the run anew"
        )

    try:
        fields = json.loads(text)
    except ValueError:
        raise refuse("(not JSON)") from None
    if not isinstance(fields, dict) or not set(PLAN_TYPES) - set(LATER_FIELDS) <= set(fields) <= set(PLAN_TYPES):
        raise refuse("(the set of fields)")
    fields = {**LATER_FIELDS, **fields}
    for name, kind in PLAN_TYPES.items():
        value = fields[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise refuse(name)
    if fields["run_id"] != run_id:
        raise refuse("run_id")
    if not all(isinstance(source, str) for source in fields["sources"]):
        raise refuse("sources")
    if not all(isinstance(value, (str, int, float, type(None))) for value in fields["settings"].values()):
        raise refuse("settings")
    try:
        if dt.datetime.fromisoformat(fields["listed_at"]).tzinfo is None:
            raise ValueError
    except ValueError:
        raise refuse("listed_at") from None
    return Plan(**fields)


def make_plan(
    output: str, header: Plan, listing: Iterable[pa.Table], selection: Selection | None, folders: list[str] = ()
) -> Plan:
    """Select the run's images as the listing streams, write them as the plan's shards, then its
    deletion marks (`folders`: those the listing walked whole), then the marker that makes them the
    plan. The listing's partitions live on this machine's scratch disk until then."""
    folder = plan_folder(output, header.run_id)
    with tempfile.TemporaryDirectory(prefix="plan-") as scratch, listing_memory():
        listed = partitioned(listing, scratch)
        with Shards(folder, _row_group_rows(listed.rows)) as shards:
            inputs = 0
            for images, todo in selected(listed, output, selection, scratch):
                inputs += images
                shards.write(todo)
        gone, back = _write_marks(output, header.run_id, marks(listed, output, list(folders)))
    whole = replace(
        header,
        inputs=inputs,
        skipped=inputs - shards.rows,
        planned=shards.rows,
        shards=shards.count,
        gone=gone,
        back=back,
    )
    fs, root = filesystem(folder)
    fs.pipe_file(f"{root}/plan.json", json.dumps(asdict(whole)).encode())
    return whole


def _write_marks(output: str, run_id: str, rows: Iterable[pa.Table]) -> tuple[int, int]:
    """Write the deletion marks where the commit finds them; returns (gone, back)."""
    gone = back = 0
    fs, path = filesystem(marks_uri(output, run_id))
    with fs.open(path, "wb") as handle, pq.ParquetWriter(handle, MARKS_SCHEMA, compression="zstd") as writer:
        for table in rows:
            table = table.cast(MARKS_SCHEMA)
            writer.write_table(table)
            found = int(pc.sum(table.column("gone")).as_py() or 0)
            gone, back = gone + found, back + table.num_rows - found
    return gone, back


def _row_group_rows(images: int) -> int:
    """Row groups about the size of the dataset's blocks (a block reads whole row groups), within bounds
    that keep a shard's footer small."""
    least, most = ROW_GROUP_ROWS
    return min(most, max(least, -(-images // MAX_BLOCKS)))


class Shards:
    """Listing rows written as shards of at most SHARD_ROWS rows."""

    def __init__(self, folder: str, row_group_rows: int) -> None:
        self.folder, self.row_group_rows, self.rows, self.count = folder, row_group_rows, 0, 0
        self._fs, self._root = filesystem(folder)
        self._handle = self._writer = None
        self._in_shard = 0
        if protocol_of(self._fs) == "file":
            self._fs.makedirs(self._root, exist_ok=True)

    def __enter__(self) -> "Shards":
        return self

    def __exit__(self, kind, *rest) -> None:
        self._close_shard(abandon=kind is not None)

    def write(self, rows: pa.Table) -> None:
        while rows.num_rows:
            if self._handle is None:
                self._handle = self._fs.open(f"{self._root}/{_shard(self.count)}", "wb")
                self.count += 1
                self._writer = pq.ParquetWriter(self._handle, LISTING_SCHEMA, compression="zstd")
            take = rows.slice(0, SHARD_ROWS - self._in_shard)
            self._writer.write_table(take, row_group_size=self.row_group_rows)
            self._in_shard += take.num_rows
            self.rows += take.num_rows
            rows = rows.slice(take.num_rows)
            if self._in_shard >= SHARD_ROWS:
                self._close_shard()

    def _close_shard(self, abandon: bool = False) -> None:
        """Finish the open shard, or after an error abandon it (an S3 upload is aborted, never finished)."""
        handle, writer = self._handle, self._writer
        self._handle = self._writer = None
        self._in_shard = 0
        if handle is None:
            return
        try:
            if writer is not None and not abandon:
                writer.close()
        finally:
            if abandon and hasattr(handle, "discard"):
                handle.discard()  # s3fs: the multipart upload is aborted, nothing is written
            else:
                handle.close()


@dataclass(frozen=True)
class Todo:
    """What an attempt processes: shards of listing rows."""

    shards: list[str]
    rows: int
    written: str
    """When, or by which attempt, the shards were written: shards at one path written again (a plan
    removed by hand and made anew) are other files to a worker that read their footers before."""


def remaining(output: str, plan: Plan, kept: list[str]) -> Todo:
    """The plan's rows whose image no kept part (images files `kept`) holds: the plan itself for a first
    attempt, else new shards under the plan's folder, chosen by a join that spills to disk rather than
    holding the kept parts' URIs (19 million of them on a large resume)."""
    folder = plan_folder(output, plan.run_id)
    shards = [join(folder, _shard(i)) for i in range(plan.shards)]
    if not kept:
        return Todo(shards, plan.planned, plan.listed_at)
    attempt = uuid.uuid4().hex
    resumed = Shards(join(folder, f"resumed-{attempt}"), _row_group_rows(plan.planned))
    with spilling_duckdb(output) as con, resumed as left:
        rows = con.sql(f"""
            SELECT * FROM read_parquet([{sql_strings(shards)}])
            ANTI JOIN (SELECT image_uri FROM read_parquet([{sql_strings(kept)}])) USING (image_uri)""")
        for batch in rows.to_arrow_reader(1 << 16):
            left.write(pa.Table.from_batches([batch]).cast(LISTING_SCHEMA))
    return Todo([join(left.folder, _shard(i)) for i in range(left.count)], left.rows, attempt)


def blocks(todo: Todo, rows_per_block: int) -> pa.Table:
    """The todo as (shard, row group, first row, rows) pieces of at most `rows_per_block` rows: the
    blocks a run's dataset starts from, so the driver hands out places in the shards, never rows."""
    pieces = []
    for shard in todo.shards:
        metadata = _footer(shard, todo.written)
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            pieces += [
                (shard, todo.written, group, start, min(rows_per_block, rows - start))
                for start in range(0, rows, rows_per_block)
            ]
    return pa.Table.from_pylist([dict(zip(PIECE.names, piece)) for piece in pieces], schema=PIECE)


def read_blocks(pieces: pa.Table) -> pa.Table:
    """The listing rows of `blocks` pieces (run in the dataset's read tasks)."""
    tables = []
    for shard, written, group, start, rows in zip(*(pieces.column(name).to_pylist() for name in pieces.column_names)):
        fs, path = filesystem(shard)
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle, metadata=_footer(shard, written))
            tables.append(parquet.read_row_group(group).slice(start, rows))
    return pa.concat_tables(tables) if tables else LISTING_SCHEMA.empty_table()


@functools.lru_cache(maxsize=32)
def _footer(shard: str, written: str) -> pq.FileMetaData:
    """A shard's footer, read once per process and writing: a worker reads many pieces of the same shard."""
    fs, path = filesystem(shard)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata


def remove_plan(output: str, run_id: str) -> None:
    """After the commit the plan has served; one left behind by a crash between the commit and this
    call is removed by `maintain.py`."""
    fs, root = filesystem(plan_folder(output, run_id))
    if fs.exists(root):
        fs.rm(root, recursive=True)


def plan_written(output: str, run_id: str) -> float | None:
    """When the run's plan folder was last written, by the store's time stamps (None when it is empty)."""
    fs, root = filesystem(plan_folder(output, run_id))
    try:
        found = fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return None
    return max((_modified(info) for info in found.values()), default=None)


def _modified(info: dict) -> float:
    """A file's time stamp from fsspec's info: `mtime` on disk, `LastModified` on S3."""
    return float(info["mtime"]) if "mtime" in info else info["LastModified"].timestamp()


def planned_run_ids(output: str) -> list[str]:
    """Run ids that have a plan folder (whole or not)."""
    fs, root = filesystem(join(output, FOLDER))
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def _shard(index: int) -> str:
    return f"shard-{index:05d}.parquet"
