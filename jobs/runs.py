"""A run's life on storage: its partitions, the clean-up before commit and the manifest that commits it.

A run's rows live under `images/run_id=<id>/` and `class_stats/run_id=<id>/`; they count only
once `runs/<id>.json` exists. The manifest is written last and lists every part file of the run,
so parts left by retried tasks or an earlier crashed attempt are deleted before it is written.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import secrets

from jobs.errors import UserError
from jobs.storage import filesystem, join

DATASETS = ("images", "class_stats")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_run_id() -> str:
    """Sortable by time, unique across concurrent runs, and never read as a number by hive partitioning."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id) or run_id.isdigit():
        raise UserError(f"--run-id {run_id!r}: use letters, digits, '.', '_' or '-' (not only digits), at most 128")
    return run_id


def manifest_uri(output: str, run_id: str) -> str:
    return join(output, "runs", f"{run_id}.json")


def is_committed(output: str, run_id: str) -> bool:
    fs, path = filesystem(manifest_uri(output, run_id))
    return fs.exists(path)


def partition_files(output: str, dataset: str, run_id: str) -> list[str]:
    """Names of the part files currently stored in one dataset's partition of a run."""
    fs, folder = filesystem(join(output, dataset, f"run_id={run_id}"))
    if not fs.exists(folder):
        return []
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False) if p.endswith(".parquet"))


def discard_parts(output: str, run_id: str, keep: set[str] = frozenset()) -> int:
    """Delete a run's part files not in `keep`: leftovers of a crashed attempt or a retried task."""
    removed = 0
    for dataset in DATASETS:
        for name in partition_files(output, dataset, run_id):
            if name not in keep:
                fs, path = filesystem(join(output, dataset, f"run_id={run_id}", name))
                fs.rm(path)
                removed += 1
    return removed


def commit(output: str, run_id: str, manifest: dict, parts: set[str]) -> str:
    """Make a run visible: drop stray parts, then write the manifest listing exactly what remains."""
    discard_parts(output, run_id, keep=parts)
    manifest = {**manifest, "run_id": run_id, "status": "committed",
                "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "files": {dataset: sorted(f"{dataset}/run_id={run_id}/{p}" for p in parts) for dataset in DATASETS}}
    uri = manifest_uri(output, run_id)
    fs, path = filesystem(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as handle:
        json.dump(manifest, handle, indent=2, default=str)
    return uri


def clean_stale(output: str, older_than_hours: float) -> list[str]:
    """Delete partitions of runs that never committed and have not been written to for a while.

    Age guards runs still in progress elsewhere: their partitions have fresh files.
    """
    fs, _ = filesystem(output)
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=older_than_hours)
    removed = []
    for run_id in _partition_run_ids(output):
        if is_committed(output, run_id) or _newest_write(output, run_id) > cutoff:
            continue
        if discard_parts(output, run_id):
            removed.append(run_id)
    return removed


def _partition_run_ids(output: str) -> set[str]:
    run_ids = set()
    for dataset in DATASETS:
        fs, folder = filesystem(join(output, dataset))
        if fs.exists(folder):
            run_ids |= {p.rstrip("/").rsplit("/", 1)[-1].split("=", 1)[1]
                        for p in fs.ls(folder, detail=False) if "run_id=" in p.rsplit("/", 1)[-1]}
    return run_ids


def _newest_write(output: str, run_id: str) -> dt.datetime:
    newest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    for dataset in DATASETS:
        for name in partition_files(output, dataset, run_id):
            fs, path = filesystem(join(output, dataset, f"run_id={run_id}", name))
            modified = fs.modified(path)
            modified = modified if modified.tzinfo else modified.replace(tzinfo=dt.timezone.utc)
            newest = max(newest, modified)
    return newest
