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
import json
import time

from jobs.cli.flags import add_json_flag, add_storage_flags, add_version_flag
from jobs.cli.main import run_main
from jobs.cli.types import positive_int
from jobs.output import tables
from jobs.output.maintenance import MIN_RETENTION_HOURS, MaintainConfig, MaintenanceReport, maintain


def parse_args(argv: list[str] | None = None) -> tuple[MaintainConfig, bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(parser)
    parser.add_argument("--output", required=True, metavar="URI", help="output root of the segment job")
    parser.add_argument(
        "--retention-hours",
        type=positive_int,
        default=168,
        help=f"delete unreferenced files once older than this (default: 168, a week; at least {MIN_RETENTION_HOURS})",
    )
    parser.add_argument(
        "--convert-legacy",
        action="store_true",
        help="commit runs recorded by the earlier layout (runs/*.json manifests) into the tables",
    )
    add_storage_flags(parser)
    add_json_flag(parser)
    args = parser.parse_args(argv)
    return MaintainConfig(
        args.output, args.retention_hours, args.convert_legacy, args.s3_endpoint_url, args.anonymous
    ), args.json


def print_report(output: str, report: MaintenanceReport) -> None:
    for run_id in report.converted:
        print(f"converted run {run_id} of the earlier layout")
    for run_id in report.completed:
        print(f"completed the commit of run {run_id}")
    print(f"vacuum: {report.retention.describe()}")
    for name in tables.TABLES:
        removed, added = report.compacted[name]
        print(
            f"{name}: compacted {removed} files into {added}; "
            f"vacuumed {report.vacuumed[name]} unreferenced files older than {report.retention.keep_hours} h"
        )
    if report.expired_leases:
        print(f"removed {report.expired_leases} leases of attempts that died")
    if report.removed_plans:
        print(f"removed the plans of {len(report.removed_plans)} committed runs: {', '.join(report.removed_plans)}")
    if report.abandoned_plans:
        print(
            f"removed the plans of {len(report.abandoned_plans)} runs abandoned for longer than the retention "
            f"(never committed, no attempt since): {', '.join(report.abandoned_plans)}"
        )
    print(f"maintained {output}")


def machine_report(output: str, report: MaintenanceReport, seconds: float) -> dict:
    """The report as `--json` gives it."""
    return {
        "output": output,
        "seconds": round(seconds, 3),
        "converted": report.converted,
        "completed": report.completed,
        "retention_hours": report.retention.keep_hours,
        "compacted": {
            name: {"removed": removed, "added": added} for name, (removed, added) in report.compacted.items()
        },
        "vacuumed": report.vacuumed,
        "expired_leases": report.expired_leases,
        "removed_plans": report.removed_plans,
        "abandoned_plans": report.abandoned_plans,
    }


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    started = time.time()
    report = maintain(config)
    if as_json:
        print(json.dumps(machine_report(config.output, report, time.time() - started)))
    else:
        print_report(config.output, report)
    return 0


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
