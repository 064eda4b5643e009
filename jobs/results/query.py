"""The query command's subcommands as SQL over the committed tables, and their output formats."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from dataclasses import dataclass
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jobs.common.errors import UserError
from jobs.output.leases import all_leases
from jobs.output.readers import ERRORS_SQL, SUMMARY_SQL, check_run, connect, select_scope
from jobs.output.tables import require_tables
from jobs.results.quality import Drift, drift, review

FORMATS = ("table", "csv", "json", "parquet")


@dataclass(frozen=True)
class QueryConfig:
    """One query: the subcommand and what it reads; a library caller builds it, the command parses it."""

    output: str
    command: str
    format: str = "table"
    to: str | None = None
    run: str | None = None
    class_name: str | None = None
    min_fraction: float = 0.0
    limit: int = 100
    query: str | None = None
    baseline_runs: int = 7
    max_shift: float = 0.05
    max_psi: float = 0.25
    s3_endpoint_url: str | None = None
    anonymous: bool = False


RUNS_SQL = """
SELECT run_id, committed_at, inputs, skipped, ok, errors, model_name, {sha} AS model_sha256,
       wall_seconds, images_per_second, bound_by, cpus_per_replica
FROM runs ORDER BY committed_at, run_id"""
"""`{sha}`: the model's sha256, cut to 12 characters in the table for people, whole for machines."""


FIND_SQL = """
SELECT image_uri, fraction, pixels, mean_confidence, run_id, image_id
FROM scope_class_stats WHERE class_name = $class AND fraction >= $min_fraction
ORDER BY fraction DESC, image_uri LIMIT $limit"""
"""By name: each run's class_stats rows carry its own model's class names, whatever ids it gave them."""


def run_query(args: QueryConfig) -> pa.Table:
    """The subcommand's result as an Arrow table."""
    if args.command == "live":
        return live_runs(args.output)
    if args.command == "review":
        return run_review(args)[0]
    if args.command == "drift":
        return run_drift(args).rows
    con = connect(args.output)
    if args.command == "runs":
        sha = "left(model_sha256, 12)" if args.format == "table" else "model_sha256"
        return con.sql(RUNS_SQL.format(sha=sha)).to_arrow_table()
    if args.command == "sql":
        try:
            return con.sql(args.query).to_arrow_table()
        except duckdb.Error as exc:
            raise UserError(f"query failed: {str(exc).splitlines()[0]}") from exc
    check_run(con, args.run, args.output)
    select_scope(con, args.run)
    if args.command == "summary":
        return con.sql(SUMMARY_SQL).to_arrow_table()
    if args.command == "errors":
        return con.sql(ERRORS_SQL).to_arrow_table()
    check_class(con, args.run, args.class_name)
    params = {"class": args.class_name, "min_fraction": args.min_fraction, "limit": args.limit}
    return con.sql(FIND_SQL, params=params).to_arrow_table()


def run_review(args: QueryConfig) -> tuple[pa.Table, int]:
    """The scope's images, least trustworthy first, and how many carry no signals to rank by."""
    con = connect(args.output)
    check_run(con, args.run, args.output)
    select_scope(con, args.run)
    if args.class_name:
        check_class(con, args.run, args.class_name)
    return review(con, args.class_name, args.limit)


def run_drift(args: QueryConfig) -> Drift:
    con = connect(args.output)
    check_run(con, args.run, args.output)
    return drift(con, args.run, args.baseline_runs, args.max_shift, args.max_psi)


def drift_lines(found: Drift) -> list[str]:
    """What a person or a cron mail needs: one line per measure past its limit, and what was not compared."""
    run_id = found.run_id
    before = f"the {len(found.baseline_runs)} run{'s' if len(found.baseline_runs) > 1 else ''} before"
    lines = (
        [
            f"note: quality signals not recorded in {', '.join(found.unsignalled_runs)} (written before they "
            "were): compared where recorded"
        ]
        if found.unsignalled_runs
        else []
    )
    for row in found.moved:
        if row["measure"] == "signal PSI":
            lines.append(
                f"drift: signal {row['name']}: mean {row['baseline']:.3f} in {before}, {row['run']:.3f} in "
                f"{run_id} (PSI {row['shift']:.2f} > --max-psi {row['limit']:g})"
            )
        else:
            lines.append(
                f"drift: class {row['name']}: {row['measure']} {row['baseline']:.1%} in {before}, "
                f"{row['run']:.1%} in {run_id} ({100 * row['shift']:+.1f} points, past --max-shift "
                f"{row['limit']:g} and the {100 * row['noise']:.1f} points chance allows)"
            )
    return lines


LIVE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("state", pa.string()),
        ("planned", pa.int64()),
        ("done", pa.int64()),
        ("started_at", pa.timestamp("s", tz="UTC")),
        ("renewed_seconds_ago", pa.float64()),
        ("generation", pa.int64()),
        ("host", pa.string()),
        ("pid", pa.int64()),
    ]
)


def live_runs(output: str) -> pa.Table:
    """Runs not yet committed, from their leases: a live one's progress as of its last renewal (every
    few seconds), and dead attempts whose run id can be resumed."""
    require_tables(output)
    rows = [
        {
            "run_id": lease.record.run_id,
            "state": "running" if lease.alive() else "dead: resumable",
            "planned": lease.record.planned,
            "done": lease.record.done,
            "started_at": dt.datetime.fromtimestamp(lease.record.started, dt.timezone.utc),
            "renewed_seconds_ago": round(lease.age, 1),
            "generation": lease.record.generation,
            "host": lease.record.host,
            "pid": lease.record.pid,
        }
        for lease in all_leases(output)
    ]
    return pa.Table.from_pylist(sorted(rows, key=lambda row: row["started_at"]), schema=LIVE_SCHEMA)


def check_class(con: duckdb.DuckDBPyConnection, run_id: str | None, name: str) -> None:
    """An unknown class name is a typo far more often than an empty answer: say which names the
    models of the runs in scope (one run, or all) know."""
    where, params = ("WHERE run_id = $run", {"run": run_id}) if run_id else ("", {})
    known = [
        row[0]
        for row in con.execute(f"SELECT DISTINCT unnest(class_names) FROM runs {where} ORDER BY 1", params).fetchall()
    ]
    if name not in known:
        raise UserError(f"class {name!r}: no such class; classes are {', '.join(known)}", "class_name")


def write_result(table: pa.Table, fmt: str, out: BinaryIO) -> None:
    if fmt == "parquet":
        pq.write_table(table, out)
    elif fmt == "csv":
        pacsv.write_csv(_printable(table, binary=_base64), out)
    elif fmt == "json":
        rows = _printable(table, binary=_base64).to_pylist()
        out.write(json.dumps([{k: _json_value(v) for k, v in row.items()} for row in rows], indent=1).encode())
        out.write(b"\n")
    else:
        out.write(format_table(table).encode("utf-8"))


def format_table(table: pa.Table) -> str:
    """Columns aligned for a terminal: numbers right, text left, binaries as their size."""
    table = _printable(table, binary=lambda value: f"<{len(value)} bytes>")
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]
    cells = [[_cell(v) for v in column.to_pylist()] for column in table.columns]
    widths = [max([len(name)] + [len(c) for c in column]) for name, column in zip(table.column_names, cells)]
    lines = [
        "  ".join(name.rjust(w) if num else name.ljust(w) for name, w, num in zip(table.column_names, widths, numeric))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in zip(*cells):
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)))
    lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _printable(table: pa.Table, binary) -> pa.Table:
    """Binary columns (mask_png in a `SELECT *`) turned to text, which CSV, JSON and people can hold."""
    for index, field in enumerate(table.schema):
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            values = [None if v is None else binary(v) for v in table.column(index).to_pylist()]
            table = table.set_column(index, field.name, pa.array(values, pa.string()))
    return table


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
