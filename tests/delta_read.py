"""Reading the output tables with deltalake itself (its own SQL engine), independently of the project's readers."""

from __future__ import annotations

import os

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder


def table_uri(output: str, table: str) -> str:
    return f"{output.rstrip('/')}/{table}" if "://" in output else os.path.join(os.path.abspath(output), table)


def s3_options(env: dict[str, str]) -> dict[str, str]:
    """deltalake's settings for the test S3 server, from the environment a job there runs with."""
    return {
        "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
    }


def delta_table(output: str, table: str, storage_options: dict | None = None) -> DeltaTable:
    return DeltaTable(table_uri(output, table), storage_options=storage_options)


def delta_sql(output: str, sql: str, storage_options: dict | None = None) -> pa.Table:
    """Run SQL over the four tables (named images, class_stats, current, runs) of an output root."""
    query = QueryBuilder()
    for table in ("images", "class_stats", "current", "runs"):
        query.register(table, delta_table(output, table, storage_options))
    result = pa.table(query.execute(sql).read_all())
    return result.cast(pa.schema([field.with_type(_plain(field.type)) for field in result.schema]))


def _plain(kind: pa.DataType) -> pa.DataType:
    """deltalake's engine answers with string_view/binary_view; pyarrow compute kernels want plain strings."""
    if kind == pa.string_view():
        return pa.string()
    if kind == pa.binary_view():
        return pa.binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.list_(kind.value_field.with_type(_plain(kind.value_type)))
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_plain(field.type)) for field in kind])
    return kind


def snapshot(output: str, storage_options: dict | None = None) -> dict[str, tuple[int, list]]:
    """Every table's version and sorted rows (masks as their sizes): equal snapshots, equal tables."""
    state = {}
    for table in ("images", "class_stats", "current", "runs"):
        delta = delta_table(output, table, storage_options)
        rows = delta_sql(output, f"SELECT * FROM {table}", storage_options).to_pylist()
        state[table] = (delta.version(), sorted(repr(sorted(row.items())) for row in rows))
    return state
