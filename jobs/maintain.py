"""Keep an output root healthy as nightly runs pile up: finish interrupted commits, compact small
files, and delete files no table version needs any more. Safe while runs are in progress.

    python jobs/maintain.py --output s3://bucket/seg/
    python jobs/maintain.py --output ./seg --convert-legacy    # results of the earlier layout

Deleting is Delta's vacuum: files no longer referenced (replaced by compaction, or written by an
attempt that never committed) once older than --retention-hours. Readers still on an older table
version need its files for that long; a run still in progress holds a lease, and the retention
is stretched past its start, so none of its files are touched.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.cli.flags import add_storage_flags  # noqa: E402
from jobs.cli.types import positive_int  # noqa: E402
from jobs.common.errors import UserError, run_main  # noqa: E402
from jobs.output import leases, legacy, tables  # noqa: E402
from jobs.storage.files import filesystem, storage_errors  # noqa: E402
from jobs.storage.settings import StorageOptions, configure_storage  # noqa: E402

MIN_RETENTION_HOURS = 1
"""Vacuum never deletes a file younger than this: a run that starts while maintenance runs has
written its files after the live leases were read."""


@dataclass(frozen=True)
class MaintainConfig:
    output: str
    retention_hours: int = 168
    convert_legacy: bool = False
    s3_endpoint_url: str | None = None
    anonymous: bool = False


def parse_args(argv: list[str] | None = None) -> MaintainConfig:
    parser = argparse.ArgumentParser(prog="maintain.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, metavar="URI", help="output root of the segment job")
    parser.add_argument("--retention-hours", type=positive_int, default=168,
                        help="delete unreferenced files once older than this (default: 168, a week; "
                             f"at least {MIN_RETENTION_HOURS})")
    parser.add_argument("--convert-legacy", action="store_true",
                        help="commit runs recorded by the earlier layout (runs/*.json manifests) into the tables")
    add_storage_flags(parser)
    args = parser.parse_args(argv)
    return MaintainConfig(args.output, args.retention_hours, args.convert_legacy, args.s3_endpoint_url, args.anonymous)


def maintain(config: MaintainConfig) -> dict:
    """Run every step; returns what each did."""
    configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    fs, root = filesystem(config.output)
    with storage_errors(config.output):
        if not fs.exists(root):
            raise UserError(f"{config.output}: no such output folder")
        leases.check_conditional_writes(config.output)
        converted = legacy.convert(config.output) if config.convert_legacy else []
        tables.require_tables(config.output)
        report = {"converted": converted, "completed": tables.complete_pending(config.output)}
        report["compacted"] = {name: compact(config.output, name) for name in tables.TABLES}
        report["retention_hours"] = retention_for(config.output, config.retention_hours)
        report["vacuumed"] = {name: vacuum(config.output, name, report["retention_hours"]) for name in tables.TABLES}
        report["expired_leases"] = leases.remove_dead(config.output)
    return report


def compact(output: str, table: str) -> tuple[int, int]:
    """Rewrite each partition's small files into few large ones; returns (files removed, files added)."""
    result = {}

    def attempt() -> None:
        result.update(tables.open_table(output, table).optimize.compact())

    tables.retry_conflicts(attempt)
    return int(result["numFilesRemoved"]), int(result["numFilesAdded"])


def retention_for(output: str, hours: int) -> int:
    """The retention to vacuum with: stretched past the start of every live run."""
    oldest = max((time.time() - lease.started_at for lease in leases.live_leases(output)), default=0.0)
    return max(hours, MIN_RETENTION_HOURS, math.ceil(oldest / 3600) + 1)


def vacuum(output: str, table: str, retention_hours: int) -> int:
    """Delete the table's unreferenced files older than the retention; returns how many."""
    delta = tables.open_table(output, table)
    deleted = delta.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False,
                           full=True)
    delta.create_checkpoint()
    delta.cleanup_metadata()
    return len(deleted)


def print_report(output: str, report: dict) -> None:
    for run_id in report["converted"]:
        print(f"converted run {run_id} of the earlier layout")
    for run_id in report["completed"]:
        print(f"completed the commit of run {run_id}")
    for name in tables.TABLES:
        removed, added = report["compacted"][name]
        print(f"{name}: compacted {removed} files into {added}; "
              f"vacuumed {report['vacuumed'][name]} unreferenced files older than {report['retention_hours']} h")
    if report["expired_leases"]:
        print(f"removed {report['expired_leases']} leases of attempts that died")
    print(f"maintained {output}")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print_report(config.output, maintain(config))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_main(main)
