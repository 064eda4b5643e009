"""The columns' one declaration: a root whose tables hold only some of today's columns gains every
other one, whatever its Arrow type (nested ones included), and reads the old rows' new columns as null."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from delta_read import delta_sql, delta_table
from deltalake import Schema, write_deltalake

from jobs.output import tables
from jobs.output.columns import CLASS_STATS_COLUMNS, CURRENT_COLUMNS, IMAGE_COLUMNS, RUN_ID


def test_every_declared_column_is_added_to_a_root_written_before_it(tmp_path):
    root = str(tmp_path / "out")
    kept = ("image_id", "run_id")
    for table in tables.TABLES:
        written = pa.schema([f for f in tables.SCHEMAS[table] if f.name in kept or table == "runs"])
        rows = pa.Table.from_pylist([{"image_id": "old", "run_id": "before"}], schema=written)
        write_deltalake(
            tables.delta_uri(root, table),
            rows if table != "runs" else written.empty_table(),
            partition_by=["run_id"] if table in tables.PARTITIONED else None,
        )
    tables.ensure_tables(root)
    for table in tables.TABLES:
        have = {f.name: repr(f.type) for f in delta_table(root, table).schema().fields}
        assert have == {f.name: repr(f.type) for f in Schema.from_arrow(tables.SCHEMAS[table]).fields}, table
    old = delta_sql(root, "SELECT image_id, width, classes, mask_png, confidence_mean FROM images").to_pylist()
    assert old == [{"image_id": "old", "width": None, "classes": None, "mask_png": None, "confidence_mean": None}]


def test_the_schemas_are_the_declarations():
    assert tables.IMAGES_FILE_SCHEMA.names == [c.name for c in IMAGE_COLUMNS]
    assert tables.CLASS_STATS_FILE_SCHEMA.names == [c.name for c in CLASS_STATS_COLUMNS]
    assert tables.SCHEMAS["current"].names == [c.name for c in CURRENT_COLUMNS]
    assert tables.SCHEMAS["images"].names[-1] == RUN_ID.name


def test_every_column_is_documented():
    documented = (Path(__file__).resolve().parent.parent / "docs" / "output.md").read_text()
    for table, schema in tables.SCHEMAS.items():
        missing = [name for name in schema.names if f"`{name}`" not in documented]
        assert not missing, f"{table}: {missing} not in docs/output.md"
