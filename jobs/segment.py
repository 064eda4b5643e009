"""Segment every image of a collection with a U-Net artifact; write masks and per-class statistics to Parquet.

    python jobs/segment.py --input s3://bucket/photos/ --output s3://bucket/seg/ --model s3://bucket/models/v3
    python jobs/segment.py --demo
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jobs import runs  # noqa: E402
from jobs.arguments import fraction, non_negative_float, overlap, positive_float, positive_int  # noqa: E402
from jobs.errors import UserError, run_main  # noqa: E402
from jobs.pipeline import Inference, ModelInfo, Resources, build_dataset  # noqa: E402
from jobs.results import select_new  # noqa: E402
from jobs.storage import (  # noqa: E402
    StorageOptions, add_storage_flags, check_writable, configure_storage, list_inputs, storage_errors,
)
from unet_core import DEFAULT_MAX_PIXELS  # noqa: E402
from unet_core.image import PRECISIONS  # noqa: E402


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
    mode: str = "letterbox"
    tile_overlap: float = 0.25
    tta: str = "none"
    max_pixels: int = DEFAULT_MAX_PIXELS
    rows_per_file: int = 256
    run_id: str | None = None
    incremental: bool = False
    retry_errors: bool = False
    max_error_rate: float = 1.0
    stale_after_hours: float = 24.0
    address: str | None = None
    unsafe_allow_code: bool = False
    s3_endpoint_url: str | None = None
    anonymous: bool = False


def parse_args(argv: list[str] | None = None) -> tuple[SegmentConfig, bool]:
    parser = argparse.ArgumentParser(
        prog="segment.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", metavar="URI", dest="inputs",
                        help="folders or prefixes (recursive), globs, single images, or list files "
                             "(.txt/.csv/.parquet of URIs: the way to pass millions of images)")
    parser.add_argument("--output", metavar="URI", help="output root: images/, class_stats/ and runs/ go under it")
    parser.add_argument("--model", metavar="URI", help="model artifact folder (see unet_core.save_artifact)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="images per model call; fixed, the last batch is padded (default: 8)")
    parser.add_argument("--actors", default="auto", metavar="MIN[:MAX]",
                        help="size of the autoscaling pool of model replicas (default: auto = 1 up to what "
                             "the cluster's GPUs or nodes hold)")
    parser.add_argument("--cpus-per-actor", type=positive_float, default=None,
                        help="CPUs reserved per replica; TensorFlow's thread pool is sized to it (default: 1 "
                             "with GPUs, else the largest node's CPUs minus 0.5 left for decoding)")
    parser.add_argument("--gpus-per-actor", type=non_negative_float, default=0.0,
                        help="GPUs per replica: 1 pins one GPU each, 0.5 puts two replicas on a GPU (default: 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bfloat16 on CPUs with bf16 instructions, float16 on GPUs, else float32")
    parser.add_argument("--mode", choices=("letterbox", "tile"), default="letterbox",
                        help="letterbox: scale each image into one model input (ordinary photos); tile: "
                             "sliding-window inference at full resolution (large images, bounded memory)")
    parser.add_argument("--tile-overlap", type=overlap, default=0.25,
                        help="with --mode tile, the fraction by which tiles overlap (default: 0.25)")
    parser.add_argument("--tta", choices=("none", "flip"), default="none",
                        help="flip: average each prediction with that of the mirrored image (2x compute)")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse larger images before decoding them (default: {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--rows-per-file", type=positive_int, default=256,
                        help="images per Parquet file (default: 256)")
    parser.add_argument("--run-id", default=None,
                        help="name of this run (default: UTC time + random suffix); rerunning an unfinished "
                             "run id discards its partial output and completes it")
    parser.add_argument("--incremental", action="store_true",
                        help="skip images (same URI, size and mtime/ETag) that a committed run of the same "
                             "model already processed")
    parser.add_argument("--retry-errors", action="store_true",
                        help="with --incremental, process again images whose earlier result was an error")
    parser.add_argument("--max-error-rate", type=fraction, default=1.0, metavar="R",
                        help="exit with status 3 when more than this fraction of the processed images failed; "
                             "all rows are still written and committed (default: 1.0, never)")
    parser.add_argument("--stale-after-hours", type=non_negative_float, default=24.0,
                        help="delete files of runs that never committed and were last written this long ago "
                             "(default: 24)")
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
        runs.check_run_id(args.run_id)
    fields = {f.name for f in dataclasses.fields(SegmentConfig)}
    return SegmentConfig(**{k: v for k, v in vars(args).items() if k in fields}), args.demo












def connect_ray(address: str | None, env_vars: dict[str, str] | None = None) -> None:
    """Join the cluster this job runs in (RAY_ADDRESS, set by `ray job submit`), else start Ray here.

    `env_vars` (the storage settings) go to every worker of the job through its runtime env.
    """
    import ray

    runtime_env = {"env_vars": env_vars} if env_vars else None
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True, runtime_env=runtime_env)
    ray.data.DataContext.get_current().enable_progress_bars = True


def plan_resources(config: SegmentConfig) -> Resources:
    """Turn the flags and what the cluster has into an actor-pool layout."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    max_node_cpus = max((n.get("CPU", 0) for n in nodes), default=1)
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    gpus = config.gpus_per_actor
    if gpus > 0 and total_gpus < gpus:
        raise UserError(f"--gpus-per-actor {gpus}: the cluster has {total_gpus:g} GPUs")
    cpus = config.cpus_per_actor or (1.0 if gpus else max(0.5, max_node_cpus - 0.5))
    if cpus > max_node_cpus:
        raise UserError(f"--cpus-per-actor {cpus:g}: no node has that many CPUs (largest: {max_node_cpus:g})")
    fit = sum(int(n.get("GPU", 0) // gpus) for n in nodes) if gpus else sum(int(n.get("CPU", 0) // cpus) for n in nodes)
    if config.actors == "auto":
        low, high = 1, max(1, fit)
    else:
        low, high = _parse_actors(config.actors)
    if gpus and high > fit:
        raise UserError(f"--actors {config.actors}: only {fit} replicas of {gpus:g} GPU fit on the cluster's GPUs")
    return Resources(low, high, cpus, gpus, config.batch_size, rows_per_file=config.rows_per_file)


def _parse_actors(text: str) -> tuple[int, int]:
    try:
        low, _, high = text.partition(":")
        low, high = int(low), int(high or low)
    except ValueError:
        raise UserError(f"--actors {text!r}: expected MIN or MIN:MAX, e.g. 2 or 1:8") from None
    if not 1 <= low <= high:
        raise UserError(f"--actors {text!r}: need 1 <= MIN <= MAX")
    return low, high


def model_info(uri: str, allow_unsafe: bool = False) -> ModelInfo:
    """Load the artifact once here, so a refused, tampered or corrupt model is one clear error
    before any replica starts."""
    from unet_core import load_artifact

    meta = load_artifact(uri, allow_unsafe=allow_unsafe).metadata
    height, width = meta.input_size
    if height != width:
        raise UserError(f"{uri}: letterboxing needs a square model input, this one is {height}x{width}")
    return ModelInfo(uri, meta.name, meta.sha256, tuple(meta.class_names), tuple(meta.colors), height)


def segment(config: SegmentConfig) -> dict:
    """Run the job and commit it; returns the manifest."""
    storage_env = configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    with storage_errors(config.model):
        model = model_info(config.model, config.unsafe_allow_code)
    listing = list_inputs(config.inputs)
    if len(listing) == 0:
        raise UserError(f"no images found in {' '.join(config.inputs)}")
    run_id = config.run_id or runs.new_run_id()
    check_writable(config.output)
    if runs.is_committed(config.output, run_id):
        raise UserError(f"run {run_id} is already committed in {config.output}; pick another --run-id")
    _discard_unfinished(config, run_id)
    todo, skipped = select_new(listing, config.output, model.sha256, config.retry_errors) \
        if config.incremental else (listing, 0)
    started = time.time()
    parts = _process(todo, model, config, run_id, storage_env) if todo.num_rows else []
    wall = time.time() - started
    rows = sum(int(p["rows"]) for p in parts)
    ok = sum(int(p["ok"]) for p in parts)
    if rows != todo.num_rows:
        raise RuntimeError(f"run {run_id}: {rows} result rows for {todo.num_rows} inputs; not committing")
    class_pixels = [int(sum(p["class_pixels"][c] for p in parts)) for c in range(len(model.class_names))]
    manifest = {
        "config": dataclasses.asdict(config),
        "model": {"uri": model.uri, "name": model.name, "sha256": model.sha256, "class_names": list(model.class_names)},
        "counts": {"inputs": listing.num_rows, "skipped": skipped, "processed": rows, "ok": ok, "errors": rows - ok},
        "class_pixels": dict(zip(model.class_names, class_pixels)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_seconds": round(wall, 3),
        "images_per_second": round(rows / wall, 3) if wall > 0 else None,
        "replicas": replicas_used(parts),
    }
    manifest_path = runs.commit(config.output, run_id, manifest, {str(p["part"]) for p in parts})
    return {**manifest, "run_id": run_id, "manifest_uri": manifest_path}


def _discard_unfinished(config: SegmentConfig, run_id: str) -> None:
    """Same run id: redo it from scratch. Other runs: clean those abandoned long ago."""
    stale = runs.discard_parts(config.output, run_id)
    if stale:
        print(f"discarded {stale} files of an unfinished earlier attempt of run {run_id}")
    for old in runs.clean_stale(config.output, config.stale_after_hours):
        print(f"deleted the files of run {old}, which never committed")


def _process(todo, model: ModelInfo, config: SegmentConfig, run_id: str, storage_env: dict) -> list[dict]:
    connect_ray(config.address, storage_env)
    resources = plan_resources(config)
    print(f"run {run_id}: {todo.num_rows} images, model {model.name} ({model.sha256[:12]}), "
          f"{resources.min_actors}-{resources.max_actors} replicas x {resources.cpus_per_actor:g} CPU"
          + (f" + {resources.gpus_per_actor:g} GPU" if resources.gpus_per_actor else ""))
    inference = Inference(
        precision=config.precision, tile_overlap=config.tile_overlap if config.mode == "tile" else None,
        tta=config.tta == "flip", max_pixels=config.max_pixels, allow_unsafe=config.unsafe_allow_code)
    dataset = build_dataset(todo, model, resources, config.output, run_id, inference)
    return dataset.take_all()


def replicas_used(parts: list[dict]) -> list[dict]:
    """Every model replica that segmented images in this run: node, assigned GPUs, TF device."""
    placements = {placement for part in parts for placement in json.loads(part["replicas"])}
    return [json.loads(placement) for placement in sorted(placements)]


def print_summary(manifest: dict) -> None:
    counts = manifest["counts"]
    total = sum(manifest["class_pixels"].values()) or 1
    shares = ", ".join(f"{name} {pixels / total:.1%}" for name, pixels in manifest["class_pixels"].items())
    print(f"run {manifest['run_id']}: {counts['inputs']} images, {counts['skipped']} skipped, "
          f"{counts['processed']} processed: {counts['ok']} ok, {counts['errors']} errors "
          f"in {manifest['wall_seconds']:.1f} s ({manifest['images_per_second']} images/s)")
    print(f"class shares: {shares}")
    print(f"committed: {manifest['manifest_uri']}")


def error_rate_exceeded(manifest: dict, limit: float) -> bool:
    counts = manifest["counts"]
    return counts["processed"] > 0 and counts["errors"] / counts["processed"] > limit


def main(argv: list[str] | None = None) -> int:
    config, demo = parse_args(argv)
    if demo:
        from jobs.demo import run_demo

        return run_demo(config, segment, print_summary)
    manifest = segment(config)
    print_summary(manifest)
    if error_rate_exceeded(manifest, config.max_error_rate):
        print(f"error: {manifest['counts']['errors']} of {manifest['counts']['processed']} images failed, "
              f"above --max-error-rate {config.max_error_rate:g}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    run_main(main)
