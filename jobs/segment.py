"""Segment every image of a collection with a U-Net artifact: masks and per-class statistics, committed to Delta Lake tables.

python jobs/segment.py --input s3://bucket/photos/ --output s3://bucket/seg/ --model s3://bucket/models/v3
python jobs/segment.py --demo
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.cli.flags import add_json_flag, add_replica_flags, add_version_flag, config_from
from jobs.cli.main import run_main
from jobs.cli.types import fraction, positive_float, positive_int
from jobs.inference.config import SegmentConfig
from jobs.inference.pipeline import MASK_RESOLUTIONS
from jobs.inference.run import error_rate_exceeded, segment
from jobs.output import leases
from jobs.output.records import RunRecord


def parse_args(argv: list[str] | None = None) -> tuple[SegmentConfig, bool, bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(parser)
    parser.add_argument(
        "--input",
        nargs="+",
        metavar="URI",
        dest="inputs",
        help="folders or prefixes (recursive), globs, single images, or list files "
        "(.txt/.csv/.parquet of URIs: the way to pass millions of images)",
    )
    parser.add_argument(
        "--output",
        metavar="URI",
        help="output root: the Delta tables images/, class_stats/, current/ and runs/ go under it",
    )
    parser.add_argument("--model", metavar="URI", help="model artifact folder (see unet_core.save_artifact)")
    parser.add_argument(
        "--rows-per-file",
        type=positive_int,
        default=2048,
        help="images per Parquet part (default: 2048, parts of tens of MB at typical mask sizes); "
        "a run that dies keeps its finished parts",
    )
    parser.add_argument(
        "--mask-resolution",
        choices=MASK_RESOLUTIONS,
        default="native",
        help="native (default): each mask PNG at its image's own size; model: at the model's "
        "resolution, the part of the model input the image filled (its size says the scale; an "
        "image smaller than that keeps its own), which costs the CPUs a fraction of a "
        "full-size mask. Tile mode is always native",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="name of this run (default: UTC time + random suffix). Run a dead attempt's id again to "
        "resume it: its plan and finished parts are kept. A live or committed id is refused",
    )
    parser.add_argument(
        "--progress-every",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="a progress line (done/planned, rate, ETA, errors) this often (default: 30)",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="skip images whose current result (same URI, size and mtime/ETag) came from this model",
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="with --incremental, process again every image whose earlier result was an error "
        "(without it only transient errors, where the store failed, are tried again)",
    )
    parser.add_argument(
        "--max-error-rate",
        type=fraction,
        default=1.0,
        metavar="R",
        help="exit with status 3 when more than this fraction of the processed images failed; "
        "all rows are still written and committed (default: 1.0: only a run in which every "
        "processed image failed fails, with status 4)",
    )
    add_replica_flags(parser)
    add_json_flag(parser)
    parser.add_argument(
        "--demo",
        action="store_true",
        help="make synthetic scenes and a small model trained on them, segment them into "
        "./demo-output/ and report the mIoU against the true masks",
    )
    args = parser.parse_args(argv)
    if args.demo:
        args.inputs = args.inputs or []
        args.output = args.output or "demo-output"
        args.model = args.model or ""
    missing = [
        flag
        for flag, value in (("--input", args.inputs), ("--output", args.output), ("--model", args.model))
        if value is None
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or use --demo)")
    if args.run_id:
        leases.check_run_id(args.run_id)
    return config_from(SegmentConfig, args), args.demo, args.json


def print_summary(record: RunRecord, output: str) -> None:
    total = sum(record.class_pixels) or 1
    shares = ", ".join(f"{name} {pixels / total:.1%}" for name, pixels in zip(record.class_names, record.class_pixels))
    resumed = f" ({record.resumed} kept from an earlier attempt)" if record.resumed else ""
    rate = f" ({record.images_per_second} images/s)" if record.images_per_second else ""
    stage = "the model" if record.bound_by == "model" else record.bound_by
    bound = f"; bound by {stage} ({record.cpus_per_replica:.2g} CPUs per replica keep it busy)" if stage else ""
    print(
        f"run {record.run_id}: {record.inputs} images, {record.skipped} skipped, "
        f"{record.processed} processed{resumed}: {record.ok} ok, {record.errors} errors "
        f"in {record.wall_seconds:.1f} s{rate}{bound}"
    )
    print(f"class shares: {shares}")
    print(f"committed to the Delta tables under {output}")


SUMMARY_FIELDS = (
    "inputs",
    "skipped",
    "processed",
    "resumed",
    "ok",
    "errors",
    "wall_seconds",
    "images_per_second",
    "model_name",
    "model_sha256",
    "model_uri",
    "commit_version",
    "read_seconds",
    "decode_seconds",
    "model_seconds",
    "postprocess_seconds",
    "write_seconds",
    "cpus_per_replica",
    "bound_by",
)
"""What `--json` reports of a run, after its id and output (its whole record is the `runs` row)."""


def main(argv: list[str] | None = None) -> int:
    config, demo, as_json = parse_args(argv)
    if demo:
        from jobs.inference.demo import run_demo

        return run_demo(config, segment, print_summary)
    record = segment(config)
    if as_json:
        summary = {name: getattr(record, name) for name in SUMMARY_FIELDS}
        print(json.dumps({"run_id": record.run_id, "output": config.output, **summary}))
    else:
        print_summary(record, config.output)
    if record.processed and not record.ok:
        print(
            f"error: every one of the {record.processed} processed images failed; `python jobs/query.py "
            f"--output {config.output} errors --run {record.run_id}` lists why",
            file=sys.stderr,
        )
        return 4
    if error_rate_exceeded(record, config.max_error_rate):
        print(
            f"error: {record.errors} of {record.processed} images failed, "
            f"above --max-error-rate {config.max_error_rate:g}",
            file=sys.stderr,
        )
        return 3
    return 0


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
