"""Query the committed results of segmentation runs with DuckDB, on a local or s3:// output root.

    python jobs/query.py --output s3://bucket/seg/ runs
    python jobs/query.py --output s3://bucket/seg/ summary [--run ID]
    python jobs/query.py --output s3://bucket/seg/ find --class person --min-fraction 0.3 --limit 20
    python jobs/query.py --output s3://bucket/seg/ errors [--run ID]
    python jobs/query.py --output s3://bucket/seg/ sql "SELECT status, count(*) FROM images GROUP BY status"
    python jobs/query.py --output s3://bucket/seg/ live
    python jobs/query.py --output s3://bucket/seg/ review [--run ID] [--class NAME] [--limit 20]
    python jobs/query.py --output s3://bucket/seg/ drift [--run ID] [--baseline-runs 7] [--max-shift 0.05]

Without --run, summary/find/errors/review read the current rows: for each image, its row from the run
that processed its newest version (the `current` table). Output is an aligned table, or
--format csv|json|parquet. `drift` ends with status 6 when the run moved past a limit.
"""

from __future__ import annotations

import argparse
import sys

from jobs.cli.flags import add_storage_flags, add_version_flag, config_from
from jobs.cli.main import run_main
from jobs.cli.types import fraction, positive_float, positive_int
from jobs.common.errors import UserError
from jobs.results.query import FORMATS, QueryConfig, drift_lines, run_drift, run_query, run_review, write_result
from jobs.storage.files import storage_errors
from jobs.storage.settings import StorageOptions, configure_storage


def parse_args(argv: list[str] | None = None) -> QueryConfig:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--output", metavar="URI", help="output root of the segment job (required)")
    common.add_argument(
        "--format",
        choices=FORMATS,
        help="table (default: aligned, for people), csv, json (an array of objects) or parquet "
        "(binary: --to FILE or a redirect)",
    )
    common.add_argument("--to", metavar="FILE", help="write the result to this local file instead of stdout")
    add_storage_flags(common)
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--run", metavar="ID", default=None, help="one committed run (default: current rows)")

    parser = argparse.ArgumentParser(
        description=__doc__, parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_version_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("runs", parents=[common], help="committed runs: counts, model, wall time")
    commands.add_parser(
        "summary", parents=[common, run], help="per class: pixel total, share of all pixels, images containing it"
    )
    find = commands.add_parser("find", parents=[common, run], help="images where a class covers at least a fraction")
    find.add_argument("--class", dest="class_name", required=True, metavar="NAME")
    find.add_argument("--min-fraction", type=fraction, required=True, metavar="F", help="0..1")
    find.add_argument("--limit", type=positive_int, default=100, metavar="N", help="at most N images (default 100)")
    commands.add_parser("errors", parents=[common, run], help="images that failed, and why")
    sql = commands.add_parser(
        "sql",
        parents=[common],
        help="any query over the views images, class_stats, runs, current_images, current_class_stats",
    )
    sql.add_argument("query", metavar="SQL")
    commands.add_parser(
        "live", parents=[common], help="runs in progress (planned, done, host) and dead attempts that can be resumed"
    )
    review = commands.add_parser(
        "review",
        parents=[common, run],
        help="the images whose masks are least to be trusted first, by their quality signals",
    )
    review.add_argument("--class", dest="class_name", metavar="NAME", help="only images where this class is found")
    review.add_argument("--limit", type=positive_int, default=20, metavar="N", help="at most N images (default 20)")
    drift = commands.add_parser(
        "drift",
        parents=[common],
        help="a run's class shares and quality signals against the runs before it; status 6 "
        "when one moved past its limit",
    )
    drift.add_argument(
        "--run",
        metavar="ID",
        default=None,
        help="the committed run to check (default: the latest that segmented any image)",
    )
    drift.add_argument(
        "--baseline-runs",
        type=positive_int,
        default=7,
        metavar="K",
        help="compare with the K committed runs before it, pooled (default 7)",
    )
    drift.add_argument(
        "--max-shift",
        type=fraction,
        default=0.05,
        metavar="X",
        help="a class moved when its share of pixels or of images changed by more than X (default 0.05: five points)",
    )
    drift.add_argument(
        "--max-psi",
        type=positive_float,
        default=0.25,
        metavar="P",
        help="a quality signal moved when its population stability index exceeds P (default 0.25)",
    )
    args = parser.parse_args(argv)
    if "output" not in args:
        parser.error("the following arguments are required: --output")
    return config_from(QueryConfig, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_storage(StorageOptions(args.s3_endpoint_url, args.anonymous))
    notes, status = [], 0
    with storage_errors(args.output):
        if args.command == "review":
            table, unsignalled = run_review(args)
            if unsignalled:
                notes = [
                    f"note: {unsignalled} images of the scope carry no quality signals (written before they were "
                    "recorded) and are not ranked"
                ]
        elif args.command == "drift":
            found = run_drift(args)
            table, notes, status = found.rows, drift_lines(found), DRIFTED if found.moved else 0
        else:
            table = run_query(args)
    if args.to:
        with storage_errors(args.to), open(args.to, "wb") as out:
            write_result(table, args.format, out)
    elif args.format == "parquet" and sys.stdout.isatty():
        raise UserError("--format parquet is binary: add --to FILE or redirect the output to a file")
    else:
        write_result(table, args.format, sys.stdout.buffer)
    sys.stdout.flush()
    for line in notes:
        print(line, file=sys.stderr)
    return status


DRIFTED = 6
"""Exit status of `drift` when the run moved past a limit: for a cron or a RayJob to alert on."""


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
