"""A segmentation run from listing to commit: the one call `jobs/segment.py` makes.

An attempt holds the run id's lease from its plan to its commit. Its plan (what to process) is
written once per run id; its parts are kept across attempts (`jobs.output.plans`, `jobs.output.parts`),
so running a dead attempt's id again resumes it: only the planned images that no finished part holds
are processed, and the run commits once with every part.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import time
from typing import Iterator

import pyarrow as pa

from jobs.cluster.capacity import await_nodes, bound, plan_resources, replica_bundle, spare_cpus_per_replica
from jobs.cluster.connect import connect_ray
from jobs.common.errors import UserError
from jobs.inference.config import SegmentConfig
from jobs.inference.model import ModelInfo, model_info
from jobs.inference.pipeline import build_dataset, with_model_mode
from jobs.inference.progress import Progress
from jobs.output import leases, tables
from jobs.output.incremental import Selection
from jobs.output.parts import kept_files, kept_parts
from jobs.output.records import RunRecord
from jobs.output.plans import Plan, Todo, load_plan, make_plan, remaining, remove_plan
from jobs.storage.files import check_writable, storage_errors
from jobs.storage.listing import iter_listing, whole_folders
from jobs.storage.settings import StorageOptions, configure_storage


def segment(config: SegmentConfig) -> RunRecord:
    """Run the job (or resume the run id's dead attempt) and commit it; returns the run's record."""
    storage_env = configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    with storage_errors(config.model):
        model = model_info(config.model, config.unsafe_allow_code)
    config = with_model_mode(config, model)
    run_id = config.run_id or leases.new_run_id()
    with storage_errors(config.output):
        resuming = config.run_id is not None and load_plan(config.output, run_id) is not None
    # a fresh run starts its listing first: a wrong first --input fails before anything is written under
    # the output (a later one while planning, under the lease)
    listing, began = (None, 0.0) if resuming else _listing(config)
    with storage_errors(config.output):
        check_writable(config.output)
        leases.check_conditional_writes(config.output)
        tables.ensure_tables(config.output)
        host_ahead = time.time() - leases.store_now(config.output)
    with leases.acquire(config.output, run_id) as lease:
        tables.check_not_committed(config.output, run_id)
        for finished in tables.complete_pending(config.output):
            print(f"completed the commit of run {finished}, whose driver had stopped mid-commit")
        plan = load_plan(config.output, run_id)
        if plan is None:
            if listing is None:  # the plan seen before the lease was removed by hand since
                listing, began = _listing(config)
            # when the listing began by the store's clock: orders image versions in `current`
            with storage_errors(config.output):
                plan = _make_plan(config, model, run_id, listing, began - host_ahead)
        _check_resumable(plan, config, model)
        kept = kept_parts(config.output, run_id)
        todo = remaining(config.output, plan, kept_files(config.output, run_id, kept))
        resumed = sum(int(p["rows"]) for p in kept)
        lease.report_progress(plan.planned, resumed)
        lease.renew()  # `query.py live` shows the plan from now on, not from the next heartbeat
        if kept:
            print(
                f"run {run_id}: resuming: {len(kept)} parts of an earlier attempt hold {resumed:,} of the "
                f"{plan.planned:,} planned images; {todo.rows:,} to go"
            )
        started = time.time()
        with Progress(run_id, plan.planned, resumed, config.progress_every, lease.report_progress) as progress:
            parts = kept + (_process(todo, model, config, run_id, storage_env, progress) if todo.rows else [])
        record = make_run_record(config, model, plan, parts, resumed, started, progress, lease.generation)
        if record.processed != plan.planned:
            raise RuntimeError(
                f"run {run_id}: {record.processed} result rows for {plan.planned} planned images; not committing"
            )
        if parts:
            record = record.with_version(
                tables.commit_run(config.output, record, [_part(p) for p in parts], lease.check)
            )
        else:
            tables.append_empty_run(config.output, record, lease.check)
        remove_plan(config.output, run_id)
    return record


def _listing(config: SegmentConfig) -> tuple[Iterator[pa.Table], float]:
    """The listing of the inputs, begun (its first rows in hand), and when it began by this host's clock."""
    began = time.time()
    chunks = iter_listing(config.inputs)
    first = next((chunk for chunk in chunks if chunk.num_rows), None)
    if first is None:
        raise UserError(f"no images found in {' '.join(config.inputs)}")
    return itertools.chain([first], chunks), began


def _make_plan(
    config: SegmentConfig, model: ModelInfo, run_id: str, listing: Iterator[pa.Table], listed_at: float
) -> Plan:
    selection = Selection(model.sha256, config.retry_errors) if config.incremental else None
    header = Plan(
        run_id,
        inputs=0,
        skipped=0,
        planned=0,
        listed_at=_iso(listed_at),
        model_sha256=model.sha256,
        sources=list(config.inputs),
        shards=0,
        settings=result_settings(config),
    )
    return make_plan(config.output, header, listing, selection, whole_folders(config.inputs))


def _check_resumable(plan: Plan, config: SegmentConfig, model: ModelInfo) -> None:
    """An attempt resumes its run as first planned; parts made by another model cannot join it."""
    if plan.model_sha256 != model.sha256:
        raise UserError(
            f"run {plan.run_id} was started with another model (sha256 {plan.model_sha256[:12]}, this "
            f"one is {model.sha256[:12]}); resume it with that model or pick another run id",
            "model",
        )
    asked = result_settings(config)
    differ = [flag for flag, value in plan.settings.items() if asked.get(flag) != value]
    if differ:
        planned = " ".join(f"{flag} {plan.settings[flag]}" for flag in differ)
        raise UserError(
            f"run {plan.run_id} was started with {planned}; this attempt asks for "
            f"{' '.join(f'{flag} {asked.get(flag)}' for flag in differ)}: resume it with the same flags "
            "or pick another run id",
            "run_id",
        )
    if plan.sources != list(config.inputs):
        print(
            f"run {plan.run_id}: resuming the plan of its first attempt ({plan.planned:,} images from "
            f"{' '.join(plan.sources)}); --input {' '.join(config.inputs)} is not listed again"
        )


def result_settings(config: SegmentConfig) -> dict[str, str | float | int | None]:
    """The flags that shape each image's result (not how fast it is made): one run, one setting of each."""
    inference = config.inference()
    return {
        "--mode": config.mode,
        "--tile-overlap": inference.tile_overlap,
        "--tta": config.tta,
        "--precision": config.precision,
        "--max-pixels": config.max_pixels,
        "--max-bytes": config.max_bytes,
        "--mask-resolution": config.mask_resolution,
    }


def make_run_record(
    config: SegmentConfig,
    model: ModelInfo,
    plan: Plan,
    parts: list[dict],
    resumed: int,
    started: float,
    progress: Progress,
    lease_generation: int,
) -> RunRecord:
    """The run's row in the `runs` table (also carried in its `images` commit, with the attempt's
    fencing token and when its listing began by the store's clock); its stage seconds are those of
    the images this attempt processed, as its progress summed them."""
    wall = time.time() - started
    rows = sum(int(p["rows"]) for p in parts)
    ok = sum(int(p["ok"]) for p in parts)
    fresh = rows - resumed
    limit = bound(progress.seconds, progress.spare)
    return RunRecord(
        **{f"{stage}_seconds": round(value, 3) for stage, value in progress.seconds.items()},
        cpus_per_replica=round(limit.cpus_per_replica, 3) if limit else None,
        bound_by=limit.stage if limit else None,
        run_id=plan.run_id,
        started_at=_utc(started),
        committed_at=_utc(time.time()),
        inputs=plan.inputs,
        skipped=plan.skipped,
        processed=rows,
        resumed=resumed,
        ok=ok,
        errors=rows - ok,
        model_name=model.name,
        model_sha256=model.sha256,
        model_uri=model.uri,
        class_names=tuple(model.class_names),
        class_pixels=tuple(int(sum(p["class_pixels"][c] for p in parts)) for c in range(len(model.class_names))),
        wall_seconds=round(wall, 3),
        images_per_second=round(fresh / wall, 3) if fresh and wall > 0 else None,
        replicas=json.dumps(replicas_used(parts)),
        config=json.dumps(dataclasses.asdict(config)),
        lease_generation=lease_generation,
        listed_at=plan.listed_at,
        marks=bool(plan.gone or plan.back),
    )


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def _iso(seconds: float) -> str:
    return _utc(seconds).isoformat(timespec="microseconds")


def _part(row: dict) -> tables.Part:
    return tables.Part(
        str(row["part"]),
        int(row["images_bytes"]),
        int(row["class_stats_bytes"]),
        int(row["rows"]),
        int(row["class_rows"]),
    )


def _process(
    todo: Todo, model: ModelInfo, config: SegmentConfig, run_id: str, storage_env: dict, progress: Progress
) -> list[dict]:
    connect_ray(config.address, storage_env, config.verbosity, config.log_level)
    resources = plan_resources(config)
    progress.spare = spare_cpus_per_replica(resources)
    await_nodes(
        replica_bundle(resources.cpus_per_actor, resources.gpus_per_actor),
        resources.min_actors,
        config.wait_for_nodes,
        "model replicas",
    )
    print(
        f"run {run_id}: {todo.rows} images, model {model.name} ({model.sha256[:12]}), "
        f"{config.mode} mode, {resources.min_actors}-{resources.max_actors} replicas x {resources.cpus_per_actor:g} CPU"
        + (f" + {resources.gpus_per_actor:g} GPU" if resources.gpus_per_actor else ""),
        flush=True,
    )
    dataset = build_dataset(
        todo,
        model,
        resources,
        config.inference(),
        config.output,
        run_id,
        config.rows_per_file,
        config.mask_resolution,
    )
    parts = []
    for part in dataset.iter_rows():
        parts.append(part)
        progress.add(part)
    return parts


def replicas_used(parts: list[dict]) -> list[dict]:
    """Every model replica that segmented images in this run: node, assigned GPUs, TF device."""
    placements = {placement for part in parts for placement in json.loads(part["replicas"])}
    return [json.loads(placement) for placement in sorted(placements)]


def error_rate_exceeded(record: RunRecord, limit: float) -> bool:
    return record.processed > 0 and record.errors / record.processed > limit
