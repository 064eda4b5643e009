"""A run's part files before its commit: written whole or not at all, each carrying the facts its
commit needs, so that an attempt that died leaves parts the next attempt of its run id can keep.

A part is a pair of Parquet files of one fresh name, one in the run's partition folder of `images`
and one in that of `class_stats`. The class_stats file is written first and the images file last,
each whole (on local disk to a temporary name, then renamed; on S3 one object write), so a complete
images file means a complete pair. The images file's footer carries the counts the run's record adds
up (rows, ok, class pixels, replicas): keeping a part costs one footer read, not a scan.
"""
from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.storage.files import filesystem, join, protocol_of

FACTS_KEY = b"unet_segment.part"
"""Key of the part's facts in the images file's Parquet metadata."""
PREFIX, SUFFIX = "part-", ".parquet"
TEMPORARY = ".tmp"
"""Suffix of a local part still being written: never kept, vacuumed with the run's other strays."""
READERS = 16
"""Footers read at once when an attempt takes stock of the parts it keeps (S3 latency, not bandwidth)."""


def part_folder(output: str, table: str, run_id: str) -> str:
    return join(output, table, f"run_id={run_id}")


def write_part(output: str, run_id: str, images: pa.Table, class_stats: pa.Table, facts: dict) -> dict:
    """Write one part pair; returns its row for the commit: name, sizes, row counts and `facts`
    (ok, class_pixels, replicas)."""
    name = f"{PREFIX}{uuid.uuid4().hex}{SUFFIX}"
    class_stats_bytes = _write_whole(join(part_folder(output, "class_stats", run_id), name), class_stats)
    described = {**facts, "class_rows": class_stats.num_rows, "class_stats_bytes": class_stats_bytes}
    images = images.replace_schema_metadata({**(images.schema.metadata or {}), FACTS_KEY: json.dumps(described)})
    images_bytes = _write_whole(join(part_folder(output, "images", run_id), name), images)
    return {"part": name, "images_bytes": images_bytes, "rows": images.num_rows, **described}


def _write_whole(uri: str, rows: pa.Table) -> int:
    """Write a Parquet file so that no reader ever sees part of it; returns its size."""
    fs, path = filesystem(uri)
    local = protocol_of(fs) == "file"
    target = path + TEMPORARY if local else path
    if local:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(target, "wb") as handle:
        pq.write_table(rows, handle, compression="zstd")
    if local:
        fs.mv(target, path)
    return fs.size(path)


def kept_parts(output: str, run_id: str) -> tuple[list[dict], pa.Array]:
    """The complete parts that earlier attempts of this run id left, each as its commit row, and the
    image URIs they hold. A file whose footer cannot be read (cut short by a store that does not
    write whole objects) is skipped; so is a part holding an image that a part kept before it holds
    (an attempt that stalled, was taken over, and woke up to write one more part)."""
    fs, folder = filesystem(part_folder(output, "images", run_id))
    try:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False, refresh=True))
    except FileNotFoundError:
        return [], pa.array([], pa.string())
    complete = [n for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX)]
    with ThreadPoolExecutor(READERS) as pool:
        found = [(row, uris) for row, uris in pool.map(lambda name: _read_part(fs, f"{folder}/{name}", name), complete)
                 if row is not None]
    kept, seen = [], set()
    for row, uris in found:
        held = uris.to_pylist()
        if seen.isdisjoint(held):
            kept.append((row, uris))
            seen.update(held)
    return [row for row, _ in kept], pa.concat_arrays([uris for _, uris in kept] or [pa.array([], pa.string())])


def _read_part(fs, path: str, name: str) -> tuple[dict | None, pa.Array | None]:
    """A part's commit row (from its footer) and its image URIs, or (None, None) if it is not whole."""
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            facts = json.loads(parquet.metadata.metadata[FACTS_KEY])
            uris = parquet.read(columns=["image_uri"]).column("image_uri").combine_chunks()
            rows = parquet.metadata.num_rows
    except (OSError, KeyError, TypeError, ValueError):
        return None, None
    return {"part": name, "images_bytes": fs.size(path), "rows": rows, **facts}, uris
