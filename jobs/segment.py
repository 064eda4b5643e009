"""Segment every image of a collection with a U-Net artifact; write masks and per-class statistics to Parquet.

    python jobs/segment.py --input s3://bucket/photos/ --output s3://bucket/seg/ --model s3://bucket/models/v3
    python jobs/segment.py --demo
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jobs.cli.flags import add_storage_flags
from jobs.cli.types import add_wait_flag, fraction, non_negative_float, pool_size, positive_float, positive_int  # noqa: E402
from jobs.cluster.nodes import await_nodes, connect_ray, model_info, plan_resources, replica_bundle  # noqa: E402
from jobs.common.errors import UserError, run_main  # noqa: E402
from jobs.inference.pipeline import ModelInfo, add_inference_flags, build_dataset, inference_from_flags, with_model_mode  # noqa: E402
from jobs.output import leases, tables  # noqa: E402
from jobs.results.sql import select_new  # noqa: E402
from jobs.storage.files import DEFAULT_MAX_BYTES, check_writable, storage_errors
from jobs.storage.listing import list_inputs
from jobs.storage.settings import StorageOptions, configure_storage
from unet_core import DEFAULT_MAX_PIXELS  # noqa: E402


@dataclass(frozen=True)
class SegmentConfig:
    inputs: list[str]
    output: str
    model: str
    batch_size: int = 8
    actors: str = "auto"
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    precision: str = "auto"
    mode: str | None = None
    tile_overlap: float = 0.25
    tta: str = "none"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    rows_per_file: int = 256
    run_id: str | None = None
    incremental: bool = False
    retry_errors: bool = False
    max_error_rate: float = 1.0
    address: str | None = None
    wait_for_nodes: float = 300.0
    unsafe_allow_code: bool = False
    s3_endpoint_url: str | None = None
    anonymous: bool = False


def parse_args(argv: list[str] | None = None) -> tuple[SegmentConfig, bool]:
    parser = argparse.ArgumentParser(
        prog="segment.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", metavar="URI", dest="inputs",
                        help="folders or prefixes (recursive), globs, single images, or list files "
                             "(.txt/.csv/.parquet of URIs: the way to pass millions of images)")
    parser.add_argument("--output", metavar="URI", help="output root: the Delta tables images/, class_stats/, current/ and runs/ go under it")
    parser.add_argument("--model", metavar="URI", help="model artifact folder (see unet_core.save_artifact)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="images per model call; fixed, the last batch is padded (default: 8)")
    parser.add_argument("--actors", type=pool_size, default="auto", metavar="MIN[:MAX]",
                        help="size of the autoscaling pool of model replicas (default: auto = 1 up to what "
                             "the cluster's GPUs or nodes hold)")
    parser.add_argument("--cpus-per-actor", type=positive_float, default=None,
                        help="CPUs reserved per replica; TensorFlow's thread pool is sized to it (default: 1 "
                             "with GPUs, else the largest node's CPUs minus 0.5 left for decoding)")
    parser.add_argument("--gpus-per-actor", type=non_negative_float, default=0.0,
                        help="GPUs per replica: 1 pins one GPU each, 0.5 puts two replicas on a GPU (default: 0)")
    add_inference_flags(parser)
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse larger images before decoding them (default: {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-bytes", type=positive_int, default=DEFAULT_MAX_BYTES,
                        help=f"refuse larger files before reading them (default: {DEFAULT_MAX_BYTES:,}, 1 GiB)")
    parser.add_argument("--rows-per-file", type=positive_int, default=256,
                        help="images per Parquet file (default: 256)")
    parser.add_argument("--run-id", default=None,
                        help="name of this run (default: UTC time + random suffix); an id whose attempt died can be "
                             "run again, a live or committed one is refused")
    parser.add_argument("--incremental", action="store_true",
                        help="skip images whose current result (same URI, size and mtime/ETag) came from this model")
    parser.add_argument("--retry-errors", action="store_true",
                        help="with --incremental, process again every image whose earlier result was an error "
                             "(without it only transient errors, where the store failed, are tried again)")
    parser.add_argument("--max-error-rate", type=fraction, default=1.0, metavar="R",
                        help="exit with status 3 when more than this fraction of the processed images failed; "
                             "all rows are still written and committed (default: 1.0, never)")
    add_wait_flag(parser)
    parser.add_argument("--address", default=None,
                        help="Ray cluster to use (default: the one this job was submitted to, else a local "
                             "Ray started in-process)")
    parser.add_argument("--unsafe-allow-code", action="store_true",
                        help="UNSAFE: load models whose file carries code (Lambda layers); only for models you trust")
    add_storage_flags(parser)
    parser.add_argument("--demo", action="store_true",
                        help="make synthetic scenes and a small model trained on them, segment them into "
                             "./demo-output/ and report the mIoU against the true masks")
    args = parser.parse_args(argv)
    if args.demo:
        args.inputs = args.inputs or []
        args.output = args.output or "demo-output"
        args.model = args.model or ""
    missing = [flag for flag, value in (("--input", args.inputs), ("--output", args.output), ("--model", args.model))
               if value is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or use --demo)")
    if args.run_id:
        leases.check_run_id(args.run_id)
    fields = {f.name for f in dataclasses.fields(SegmentConfig)}
    return SegmentConfig(**{k: v for k, v in vars(args).items() if k in fields}), args.demo


def segment(config: SegmentConfig) -> dict:
    """Run the job and commit it; returns the run's record."""
    storage_env = configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    with storage_errors(config.model):
        model = model_info(config.model, config.unsafe_allow_code)
    config = with_model_mode(config, model)
    listing = list_inputs(config.inputs)
    if len(listing) == 0:
        raise UserError(f"no images found in {' '.join(config.inputs)}")
    run_id = config.run_id or leases.new_run_id()
    with storage_errors(config.output):
        check_writable(config.output)
        leases.check_conditional_writes(config.output)
        tables.ensure_tables(config.output)
    with leases.acquire(config.output, run_id) as lease:
        if tables.open_table(config.output, "images").transaction_version(run_id) is not None:
            raise UserError(f"run {run_id} is already committed in {config.output}; pick another --run-id")
        for finished in tables.complete_pending(config.output):
            print(f"completed the commit of run {finished}, whose driver had stopped mid-commit")
        todo, skipped = select_new(listing, config.output, model.sha256, config.retry_errors) \
            if config.incremental else (listing, 0)
        started = time.time()
        parts = _process(todo, model, config, run_id, storage_env) if todo.num_rows else []
        record = run_record(config, model, run_id, listing.num_rows, skipped, parts, started)
        if record["processed"] != todo.num_rows:
            raise RuntimeError(f"run {run_id}: {record['processed']} result rows for {todo.num_rows} inputs; "
                               "not committing")
        lease.check()
        if parts:
            record["commit_version"] = tables.commit_run(config.output, record, [_part(p) for p in parts])
        else:
            tables.append_empty_run(config.output, record)
    return {**record, "output": config.output}


def run_record(config: SegmentConfig, model: ModelInfo, run_id: str, inputs: int, skipped: int,
               parts: list[dict], started: float) -> dict:
    """The run's row in the `runs` table (also carried in its `images` commit)."""
    wall = time.time() - started
    rows = sum(int(p["rows"]) for p in parts)
    ok = sum(int(p["ok"]) for p in parts)
    return {
        "run_id": run_id, "started_at": _iso(started), "committed_at": _iso(time.time()),
        "inputs": inputs, "skipped": skipped, "processed": rows, "ok": ok, "errors": rows - ok,
        "model_name": model.name, "model_sha256": model.sha256, "model_uri": model.uri,
        "class_names": list(model.class_names),
        "class_pixels": [int(sum(p["class_pixels"][c] for p in parts)) for c in range(len(model.class_names))],
        "wall_seconds": round(wall, 3), "images_per_second": round(rows / wall, 3) if rows and wall > 0 else None,
        "replicas": json.dumps(replicas_used(parts)), "config": json.dumps(dataclasses.asdict(config)),
    }


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="microseconds")


def _part(row: dict) -> tables.Part:
    return tables.Part(str(row["part"]), int(row["images_bytes"]), int(row["class_stats_bytes"]),
                       int(row["rows"]), int(row["class_rows"]))


def _process(todo, model: ModelInfo, config: SegmentConfig, run_id: str, storage_env: dict) -> list[dict]:
    connect_ray(config.address, storage_env)
    resources = plan_resources(config)
    await_nodes(replica_bundle(resources.cpus_per_actor, resources.gpus_per_actor), resources.min_actors,
                config.wait_for_nodes, "model replicas")
    print(f"run {run_id}: {todo.num_rows} images, model {model.name} ({model.sha256[:12]}), "
          f"{config.mode} mode, {resources.min_actors}-{resources.max_actors} replicas x {resources.cpus_per_actor:g} CPU"
          + (f" + {resources.gpus_per_actor:g} GPU" if resources.gpus_per_actor else ""))
    inference = inference_from_flags(config, allow_unsafe=config.unsafe_allow_code)
    dataset = build_dataset(todo, model, resources, config.output, run_id, inference)
    return dataset.take_all()


def replicas_used(parts: list[dict]) -> list[dict]:
    """Every model replica that segmented images in this run: node, assigned GPUs, TF device."""
    placements = {placement for part in parts for placement in json.loads(part["replicas"])}
    return [json.loads(placement) for placement in sorted(placements)]


def print_summary(record: dict) -> None:
    total = sum(record["class_pixels"]) or 1
    shares = ", ".join(f"{name} {pixels / total:.1%}" for name, pixels in zip(record["class_names"], record["class_pixels"]))
    print(f"run {record['run_id']}: {record['inputs']} images, {record['skipped']} skipped, "
          f"{record['processed']} processed: {record['ok']} ok, {record['errors']} errors "
          f"in {record['wall_seconds']:.1f} s ({record['images_per_second']} images/s)")
    print(f"class shares: {shares}")
    print(f"committed to the Delta tables under {record['output']}")


def error_rate_exceeded(record: dict, limit: float) -> bool:
    return record["processed"] > 0 and record["errors"] / record["processed"] > limit


def main(argv: list[str] | None = None) -> int:
    config, demo = parse_args(argv)
    if demo:
        from jobs.inference.demo import run_demo

        return run_demo(config, segment, print_summary)
    record = segment(config)
    print_summary(record)
    if error_rate_exceeded(record, config.max_error_rate):
        print(f"error: {record['errors']} of {record['processed']} images failed, "
              f"above --max-error-rate {config.max_error_rate:g}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    run_main(main)
