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

from jobs.output.spill import spilling_duckdb
from jobs.output.tables import sql_strings
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


def kept_parts(output: str, run_id: str) -> list[dict]:
    """The complete parts that earlier attempts of this run id left, each as its commit row (from its
    footer: the image URIs stay in the files). A file whose footer cannot be read (cut short by a store
    that does not write whole objects) is skipped; so is a part holding an image that a part of an
    earlier name holds (an attempt that stalled, was taken over, and woke up to write one more part):
    skipping a part only means processing its images again."""
    fs, folder = filesystem(part_folder(output, "images", run_id))
    try:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False, refresh=True))
    except FileNotFoundError:
        return []
    complete = [n for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX)]
    with ThreadPoolExecutor(READERS) as pool:
        found = [
            row for row in pool.map(lambda name: _read_part(fs, f"{folder}/{name}", name), complete) if row is not None
        ]
    repeating = _repeating(output, [join(part_folder(output, "images", run_id), row["part"]) for row in found])
    return [row for row in found if row["part"] not in repeating]


def kept_files(output: str, run_id: str, kept: list[dict]) -> list[str]:
    """The URIs of the kept parts' images files."""
    return [join(part_folder(output, "images", run_id), row["part"]) for row in kept]


def _repeating(output: str, files: list[str]) -> set[str]:
    """Names of the parts that hold an image which a part of an earlier name holds too, found by a
    query that spills to disk rather than holding every kept URI."""
    if len(files) < 2:
        return set()
    with spilling_duckdb(output) as con:
        repeats = con.sql(f"""
            SELECT DISTINCT unnest(list_sort(files)[2:]) AS file FROM (
                SELECT list(filename) AS files FROM read_parquet([{sql_strings(files)}], filename = true)
                GROUP BY image_uri HAVING count(*) > 1)""").fetchall()
    return {file.rsplit("/", 1)[-1] for (file,) in repeats}


def _read_part(fs, path: str, name: str) -> dict | None:
    """A part's commit row (from its footer), or None if it is not whole."""
    try:
        with fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
            facts = json.loads(metadata.metadata[FACTS_KEY])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return {"part": name, "images_bytes": fs.size(path), "rows": metadata.num_rows, **facts}
