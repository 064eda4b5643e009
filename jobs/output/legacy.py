"""Converting an output root of the earlier layout (runs/<id>.json manifests) into the Delta tables.

Each committed run is committed again, part by part: its `images` parts gain the nested `classes`
(from the class_stats part of the same name) and the new `source_modified` column (unknown, so
null). The manifests move to `_legacy/runs/`; the old part files are left unreferenced, for
maintenance to vacuum. Interrupted, it can simply be run again: converted runs are skipped.
"""

from __future__ import annotations

import json
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.output import tables
from jobs.output.records import RunRecord
from jobs.storage.files import filesystem, join
from unet_core.quality import SIGNALS


def convert(output: str) -> list[str]:
    """Commit every committed legacy run into the tables; returns the run ids converted."""
    manifests = _manifests(output)
    if not manifests:
        return []
    tables.ensure_tables(output, converting=True)
    converted = []
    for _, manifest in manifests:
        if manifest.get("status") == "committed" and _convert_run(output, manifest):
            converted.append(manifest["run_id"])
    for path, _ in manifests:
        fs, _ = filesystem(output)
        target = filesystem(join(output, "_legacy", "runs", path.rsplit("/", 1)[-1]))[1]
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(path, target)
    return converted


def _manifests(output: str) -> list[tuple[str, dict]]:
    fs, folder = filesystem(join(output, "runs"))
    if not fs.exists(folder):
        return []
    found = []
    for path in sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".json")):
        with fs.open(path, "r", encoding="utf-8") as handle:
            found.append((path, json.load(handle)))
    return sorted(found, key=lambda item: (item[1].get("committed_at", ""), item[1].get("run_id", "")))


def _convert_run(output: str, manifest: dict) -> bool:
    run_id = manifest["run_id"]
    if tables.open_table(output, "images").transaction_version(run_id) is not None:
        return False
    classes = len(manifest["model"]["class_names"])
    parts = [_convert_part(output, run_id, name.rsplit("/", 1)[-1], classes) for name in manifest["files"]["images"]]
    tables.commit_run(output, _record(manifest), parts)
    return True


def _convert_part(output: str, run_id: str, name: str, classes: int) -> tables.Part:
    images, flat = (_read(join(output, table, f"run_id={run_id}", name)) for table in ("images", "class_stats"))
    ok = pc.equal(images.column("status"), "ok").to_numpy(zero_copy_only=False)
    images = images.append_column("classes", tables.nested_classes(flat, ok, classes))
    images = images.append_column("source_modified", pa.nulls(images.num_rows, pa.timestamp("us", tz="UTC")))
    images = images.append_column("error_kind", pa.nulls(images.num_rows, pa.string()))  # not recorded then
    for name in SIGNALS:  # nor were these
        images = images.append_column(name, pa.nulls(images.num_rows, pa.float64()))
    converted = {
        "images": images.select(tables.IMAGES_FILE_SCHEMA.names).cast(tables.IMAGES_FILE_SCHEMA),
        "class_stats": flat.select(tables.CLASS_STATS_FILE_SCHEMA.names).cast(tables.CLASS_STATS_FILE_SCHEMA),
    }
    new_name = f"part-{uuid.uuid4().hex}.parquet"
    sizes = {}
    for table, rows in converted.items():
        fs, path = filesystem(join(output, table, f"run_id={run_id}", new_name))
        with fs.open(path, "wb") as handle:
            pq.write_table(rows, handle, compression="zstd")
        sizes[table] = fs.size(path)
    return tables.Part(new_name, sizes["images"], sizes["class_stats"], images.num_rows, flat.num_rows)


def _read(uri: str) -> pa.Table:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def _record(manifest: dict) -> RunRecord:
    counts, model = manifest.get("counts", {}), manifest.get("model", {})
    class_pixels = manifest.get("class_pixels", {})
    return RunRecord.read(
        {
            "run_id": manifest["run_id"],
            "started_at": manifest.get("started_at"),
            "committed_at": manifest.get("committed_at"),
            **{key: counts.get(key) for key in ("inputs", "skipped", "processed", "ok", "errors")},
            "model_name": model.get("name"),
            "model_sha256": model.get("sha256"),
            "model_uri": model.get("uri"),
            "class_names": model.get("class_names", []),
            "class_pixels": [class_pixels.get(name, 0) for name in model.get("class_names", [])],
            "wall_seconds": manifest.get("wall_seconds"),
            "images_per_second": manifest.get("images_per_second"),
            "replicas": json.dumps(manifest.get("replicas", [])),
            "config": json.dumps(manifest.get("config", {})),
        }
    )
