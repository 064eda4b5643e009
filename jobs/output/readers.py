"""Reading what segmentation runs committed: DuckDB views over the Delta tables.

Each view is DuckDB's own Parquet reader over exactly the files the table's Delta log lists
(local or s3://, through fsspec, so no DuckDB extension is needed): files of unfinished runs or
retried tasks never show, and DuckDB reads only the columns and row groups a query needs.

Views:
    runs                 one row per committed run (counts, model, wall time)
    images, class_stats  every row of every committed run, with its `run_id`
    current_images       the `current` table: per image URI, the row of its newest image version
                         (ties: the later commit); everything but the mask bytes; images a run
                         found gone from their folder left out
    current_class_stats  the class_stats rows of those current rows
"""

from __future__ import annotations

import duckdb
import pyarrow.compute as pc

from jobs.common.errors import UserError
from jobs.output.tables import (
    TABLES,
    committed_dataset,
    committed_files,
    require_tables,
    scan,
    scan_field,
)
from jobs.output.records import RunRecord
from jobs.storage.files import filesystem

SUMMARY_SQL = """
SELECT class_id, class_name, sum(pixels)::BIGINT AS pixels,
       sum(pixels) / nullif(sum(sum(pixels)) OVER (), 0) AS share,
       count(*) FILTER (WHERE pixels > 0) AS images,
       count(*) FILTER (WHERE pixels > 0) / count(*) AS image_share
FROM scope_class_stats GROUP BY class_id, class_name ORDER BY class_id"""
"""Per class of the scope (see `select_scope`): pixel total, share of all pixels, images containing it."""

ERRORS_SQL = "SELECT image_uri, error, run_id, image_id FROM scope_images WHERE status = 'error' ORDER BY image_uri"
"""The scope's failed images and why."""


def connect(output: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the views above over `output`."""
    require_tables(output)
    con = duckdb.connect()
    if "://" in output:
        con.register_filesystem(filesystem(output)[0])
    for table in TABLES:
        rows = scan(con, table, committed_files(output, table))
        con.execute(
            f"CREATE VIEW {_view(table)} AS "
            + (f"SELECT * FROM ({rows}) WHERE deleted_at IS NULL" if table == "current" else rows)
        )
    con.execute("""
        CREATE VIEW current_class_stats AS
        SELECT c.* FROM class_stats c SEMI JOIN current_images k ON c.image_id = k.image_id AND c.run_id = k.run_id""")
    return con


def _view(table: str) -> str:
    return "current_images" if table == "current" else table


def check_run(con: duckdb.DuckDBPyConnection, run_id: str | None, output: str) -> None:
    """A run id that names no committed run is a user error, with the ones that exist."""
    if run_id is None or con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
        return
    latest = [row[0] for row in con.sql("SELECT run_id FROM runs ORDER BY committed_at DESC LIMIT 5").fetchall()]
    raise UserError(
        f"run {run_id}: no committed run of that name in {output} (latest committed: {', '.join(latest) or 'none'})",
        "run",
    )


def read_run_record(con: duckdb.DuckDBPyConnection, run_id: str | None) -> RunRecord | None:
    """A committed run's row of `runs` (the latest run when none is named), or None."""
    where, params = ("WHERE run_id = $run", {"run": run_id}) if run_id else ("", {})
    rows = con.sql(f"SELECT * FROM runs {where} ORDER BY committed_at DESC LIMIT 1", params=params).to_arrow_table()
    return RunRecord.read(rows.to_pylist()[0]) if rows.num_rows else None


def select_scope(con: duckdb.DuckDBPyConnection, run_id: str | None) -> None:
    """Views `scope_images` and `scope_class_stats`: one run's rows, or the current rows when no run is named."""
    if run_id is None:
        con.execute("CREATE OR REPLACE TEMP VIEW scope_images AS SELECT * FROM current_images")
        con.execute("CREATE OR REPLACE TEMP VIEW scope_class_stats AS SELECT * FROM current_class_stats")
        return
    literal = "'" + run_id.replace("'", "''") + "'"
    for dataset in ("images", "class_stats"):
        con.execute(f"CREATE OR REPLACE TEMP VIEW scope_{dataset} AS SELECT * FROM {dataset} WHERE run_id = {literal}")


def masks(output: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    """The mask PNGs of chosen (run_id, image_id) rows, reading only those runs' partitions."""
    if not keys:
        return {}
    run_ids = sorted({run for run, _ in keys})
    image_ids = sorted({image for _, image in keys})
    wanted = set(keys)
    scanned = committed_dataset(output, "images").to_table(
        columns=["run_id", "image_id", "mask_png"],
        filter=pc.field("run_id").isin(run_ids) & scan_field("image_id").isin(image_ids),
    )
    return {
        (r, i): m
        for r, i, m in zip(*(scanned.column(c).to_pylist() for c in ("run_id", "image_id", "mask_png")))
        if (r, i) in wanted
    }
