"""A segmentation run from listing to commit: the one call `jobs/segment.py` makes."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time

from jobs.cluster.capacity import await_nodes, plan_resources, replica_bundle
from jobs.cluster.connect import connect_ray
from jobs.common.errors import UserError
from jobs.inference.config import SegmentConfig
from jobs.inference.model import ModelInfo, model_info
from jobs.inference.pipeline import build_dataset, inference_of, with_model_mode
from jobs.output import leases, tables
from jobs.output.incremental import select_new
from jobs.storage.files import check_writable, storage_errors
from jobs.storage.listing import list_inputs
from jobs.storage.settings import StorageOptions, configure_storage


def segment(config: SegmentConfig) -> dict:
    """Run the job and commit it; returns the run's record."""
    storage_env = configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    with storage_errors(config.model):
        model = model_info(config.model, config.unsafe_allow_code)
    config = with_model_mode(config, model)
    listing_began = time.time()
    listing = list_inputs(config.inputs)
    if len(listing) == 0:
        raise UserError(f"no images found in {' '.join(config.inputs)}")
    run_id = config.run_id or leases.new_run_id()
    with storage_errors(config.output):
        check_writable(config.output)
        leases.check_conditional_writes(config.output)
        tables.ensure_tables(config.output)
        listed_at = listing_began - (time.time() - leases.store_now(config.output))
    with leases.acquire(config.output, run_id) as lease:
        tables.check_not_committed(config.output, run_id)
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
        # the fencing token, and when the listing began by the store's clock (orders versions in `current`)
        record.update(lease_generation=lease.generation, listed_at=_iso(listed_at))
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
    dataset = build_dataset(todo, model, resources, inference_of(config), config.output, run_id, config.rows_per_file)
    return dataset.take_all()


def replicas_used(parts: list[dict]) -> list[dict]:
    """Every model replica that segmented images in this run: node, assigned GPUs, TF device."""
    placements = {placement for part in parts for placement in json.loads(part["replicas"])}
    return [json.loads(placement) for placement in sorted(placements)]


def error_rate_exceeded(record: dict, limit: float) -> bool:
    return record["processed"] > 0 and record["errors"] / record["processed"] > limit
