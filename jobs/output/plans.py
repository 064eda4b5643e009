"""A run's plan: the images it is to process, fixed once per run id.

The first attempt of a run writes its plan (the listing after `--incremental` selection) under
`OUTPUT/_plans/<run_id>/` before it processes anything: Parquet shards, then `plan.json`, written
last, which makes the plan whole. An attempt that finds a whole plan takes it as it is, whatever the
store or the flags say now, so a resumed run processes exactly the set its first attempt chose,
less what its kept parts already hold. The commit removes the plan; until then `query.py live`
reads its counts.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.output.tables import sql_strings
from jobs.storage.files import filesystem, join, protocol_of
from jobs.storage.listing import LISTING_SCHEMA

FOLDER = "_plans"
SHARD_ROWS = 1 << 20
"""Listing rows per plan shard."""


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


def plan_folder(output: str, run_id: str) -> str:
    return join(output, FOLDER, run_id)


def load_plan(output: str, run_id: str) -> Plan | None:
    """The run id's whole plan, or None where no attempt finished writing one."""
    fs, path = filesystem(join(plan_folder(output, run_id), "plan.json"))
    try:
        return Plan(**json.loads(fs.cat_file(path)))
    except FileNotFoundError:
        return None


def save_plan(output: str, plan: Plan, todo: pa.Table) -> Plan:
    """Write the shards, then the marker that makes them the plan."""
    folder = plan_folder(output, plan.run_id)
    fs, root = filesystem(folder)
    if protocol_of(fs) == "file":
        fs.makedirs(root, exist_ok=True)
    shards = max(1, -(-todo.num_rows // SHARD_ROWS))
    for index in range(shards):
        with fs.open(f"{root}/{_shard(index)}", "wb") as handle:
            pq.write_table(todo.slice(index * SHARD_ROWS, SHARD_ROWS), handle, compression="zstd")
    whole = Plan(**{**asdict(plan), "planned": todo.num_rows, "shards": shards})
    fs.pipe_file(f"{root}/plan.json", json.dumps(asdict(whole)).encode())
    return whole


def remaining(output: str, plan: Plan, done: pa.Array) -> pa.Table:
    """The plan's rows whose image no kept part holds."""
    con = duckdb.connect()
    if "://" in output:
        con.register_filesystem(filesystem(output)[0])
    con.register("done", pa.table({"image_uri": done}))
    shards = sql_strings([join(plan_folder(output, plan.run_id), _shard(i)) for i in range(plan.shards)])
    rows = con.sql(f"SELECT * FROM read_parquet([{shards}]) ANTI JOIN done USING (image_uri)").to_arrow_table()
    return rows.cast(LISTING_SCHEMA)


def remove_plan(output: str, run_id: str) -> None:
    """After the commit the plan has served; one left behind by a crash between the commit and this
    call is removed by `maintain.py`."""
    fs, root = filesystem(plan_folder(output, run_id))
    if fs.exists(root):
        fs.rm(root, recursive=True)


def planned_run_ids(output: str) -> list[str]:
    """Run ids that have a plan folder (whole or not)."""
    fs, root = filesystem(join(output, FOLDER))
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def _shard(index: int) -> str:
    return f"shard-{index:05d}.parquet"
