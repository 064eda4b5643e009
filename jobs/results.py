"""Reading what segmentation runs committed, as DuckDB views over Arrow datasets.

Only committed runs are visible: a run's rows count once `runs/<id>.json` exists, and only
the part files its manifest lists are read (a crashed attempt's leftovers never show).
The Parquet files are opened with pyarrow datasets on fsspec filesystems, so local folders
and s3:// roots both work offline (DuckDB's own S3 reader needs an extension download), and
DuckDB scans them lazily with column and filter pushdown.

Views:
    runs                 one row per committed run (counts, model, wall time)
    images, class_stats  every row of every committed run, with its `run_id`
    current_images, current_class_stats
                         the latest committed row of each image: a later run that processed
                         an image again supersedes the earlier one (by commit time)
"""
from __future__ import annotations

import json
import posixpath

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from jobs.errors import UserError
from jobs.pipeline import CLASS_STATS_SCHEMA, IMAGES_SCHEMA
from jobs.runs import DATASETS
from jobs.storage import filesystem, join

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("committed_at", pa.string()), ("started_at", pa.string()),
    ("inputs", pa.int64()), ("ok", pa.int64()), ("errors", pa.int64()),
    ("model_name", pa.string()), ("model_sha256", pa.string()), ("model_uri", pa.string()),
    ("wall_seconds", pa.float64()), ("images_per_second", pa.float64()),
])
PARTITIONING = pads.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive")
SCHEMAS = {"images": IMAGES_SCHEMA, "class_stats": CLASS_STATS_SCHEMA}


def committed_manifests(output: str) -> list[dict]:
    """Every committed run's manifest, oldest commit first."""
    fs, folder = filesystem(join(output, "runs"))
    root_fs, root = filesystem(output)
    if not root_fs.exists(root):
        raise UserError(f"{output}: no such output folder")
    if not fs.exists(folder):
        return []
    manifests = []
    for path in sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".json")):
        with fs.open(path, "r", encoding="utf-8") as handle:
            try:
                manifest = json.load(handle)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: not a readable run manifest ({exc})") from exc
        if manifest.get("status") == "committed":
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: (m.get("committed_at", ""), m["run_id"]))


def runs_table(manifests: list[dict]) -> pa.Table:
    """The manifests' figures as one Arrow table (the `runs` view)."""
    rows = [{
        "run_id": m["run_id"], "committed_at": m.get("committed_at"), "started_at": m.get("started_at"),
        **{key: m.get("counts", {}).get(key) for key in ("inputs", "ok", "errors")},
        "model_name": m.get("model", {}).get("name"), "model_sha256": m.get("model", {}).get("sha256"),
        "model_uri": m.get("model", {}).get("uri"),
        "wall_seconds": m.get("wall_seconds"), "images_per_second": m.get("images_per_second"),
    } for m in manifests]
    return pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)


def committed_dataset(output: str, dataset: str, manifests: list[dict]) -> pads.Dataset:
    """One dataset over exactly the part files the manifests list, with `run_id` from the partition path."""
    schema = SCHEMAS[dataset].append(pa.field("run_id", pa.string()))
    names = [name for m in manifests for name in m.get("files", {}).get(dataset, [])]
    if not names:
        return pads.dataset(schema.empty_table())
    fs, root = filesystem(output)
    base = posixpath.join(root, dataset)
    paths = [posixpath.join(root, name) for name in names]
    return pads.dataset(paths, schema=schema, filesystem=fs, format="parquet",
                        partitioning=PARTITIONING, partition_base_dir=base)


def committed_images(output: str, columns: list[str], model_sha256: str | None = None) -> pa.Table:
    """Chosen columns of every committed `images` row (of one model's runs, if given), with `run_id`."""
    manifests = [m for m in committed_manifests(output) if model_sha256 in (None, m["model"]["sha256"])]
    return committed_dataset(output, "images", manifests).to_table(columns=columns)


def select_new(listing: pa.Table, output: str, model_sha256: str, retry_errors: bool) -> tuple[pa.Table, int]:
    """Split a listing into (to process, number skipped) against what committed runs of this model did.

    An image version (URI, size, version) is done once a committed run of the same model has an
    `ok` row for it; a version whose result was `error` counts as done unless `retry_errors`.
    """
    fs, root = filesystem(output)
    if not fs.exists(root):
        return listing, 0
    prior = committed_images(output, ["image_uri", "source_size", "source_version", "status"], model_sha256)
    done = prior.filter(pc.equal(prior.column("status"), "ok")) if retry_errors else prior
    keep = pc.invert(pc.is_in(_version_keys(listing), value_set=_version_keys(done)))
    selected = listing.filter(keep)
    return selected, listing.num_rows - selected.num_rows


def _version_keys(table: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(
        table.column("image_uri"), pc.cast(table.column("source_size"), pa.string()),
        table.column("source_version"), "\x00")


def connect(output: str) -> tuple[duckdb.DuckDBPyConnection, list[dict]]:
    """An in-memory DuckDB with the views above over `output`; also returns the manifests."""
    manifests = committed_manifests(output)
    con = duckdb.connect()
    con.register("runs", runs_table(manifests))
    for dataset in DATASETS:
        con.register(f"{dataset}_parts", committed_dataset(output, dataset, manifests))
        con.execute(f"CREATE VIEW {dataset} AS SELECT * FROM {dataset}_parts")
    if len(manifests) < 2:  # nothing can be superseded: skip the window over every image
        con.execute("CREATE VIEW current_images AS SELECT * FROM images")
        con.execute("CREATE VIEW current_class_stats AS SELECT * FROM class_stats")
        return con, manifests
    con.execute("""
        CREATE VIEW current_images AS
        SELECT i.* FROM images i JOIN runs r ON i.run_id = r.run_id
        QUALIFY row_number() OVER (PARTITION BY i.image_id ORDER BY r.committed_at DESC, r.run_id DESC) = 1""")
    con.execute("""
        CREATE VIEW current_class_stats AS
        SELECT c.* FROM class_stats c SEMI JOIN (SELECT image_id, run_id FROM current_images) k
        ON c.image_id = k.image_id AND c.run_id = k.run_id""")
    return con, manifests


def check_run(manifests: list[dict], run_id: str | None, output: str) -> None:
    """A --run that names no committed run is a user error, with the ones that exist."""
    if run_id is None or any(m["run_id"] == run_id for m in manifests):
        return
    known = ", ".join(m["run_id"] for m in manifests[-5:]) or "none"
    raise UserError(f"--run {run_id}: no committed run of that name in {output} (latest committed: {known})")


def select_scope(con: duckdb.DuckDBPyConnection, run_id: str | None) -> None:
    """Views `scope_images` and `scope_class_stats`: one run's rows, or the current rows when no run is named."""
    if run_id is None:
        con.execute("CREATE OR REPLACE TEMP VIEW scope_images AS SELECT * FROM current_images")
        con.execute("CREATE OR REPLACE TEMP VIEW scope_class_stats AS SELECT * FROM current_class_stats")
        return
    literal = "'" + run_id.replace("'", "''") + "'"
    for dataset in DATASETS:
        con.execute(f"CREATE OR REPLACE TEMP VIEW scope_{dataset} AS SELECT * FROM {dataset} WHERE run_id = {literal}")
