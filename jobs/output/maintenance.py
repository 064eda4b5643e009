"""Keeping a root healthy: finish interrupted commits, compact small files, vacuum what no
commit lists, convert roots of the earlier layout."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from jobs.common.errors import UserError
from jobs.output import leases, legacy, tables
from jobs.output.plans import plan_written, planned_run_ids, remove_plan
from jobs.storage.files import filesystem, storage_errors
from jobs.storage.settings import StorageOptions, configure_storage

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


@dataclass(frozen=True)
class MaintenanceReport:
    """What each step of `maintain` did: the command words it for people or as JSON, and a library
    caller reads the same fields."""

    converted: list[str]
    """Runs of the earlier layout committed into the tables."""
    completed: list[str]
    """Runs whose interrupted commit was finished."""
    compacted: dict[str, tuple[int, int]]
    """(files removed, files added) by table."""
    retention: Retention
    vacuumed: dict[str, int]
    """Unreferenced files deleted, by table."""
    expired_leases: int
    removed_plans: list[str]
    """Run ids of committed runs whose plan was left behind."""
    abandoned_plans: list[str]
    """Run ids of runs abandoned for longer than the retention."""


def maintain(config: MaintainConfig) -> MaintenanceReport:
    """Run every step; returns what each did."""
    configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    fs, root = filesystem(config.output)
    with storage_errors(config.output):
        if not fs.exists(root):
            raise UserError(f"{config.output}: no such output folder")
        leases.check_conditional_writes(config.output)
        converted = legacy.convert(config.output) if config.convert_legacy else []
        tables.require_tables(config.output)
        completed = tables.complete_pending(config.output, lag=1)
        compacted = {name: compact(config.output, name) for name in tables.TABLES}
        retention = retention_for(config.output, config.retention_hours)
        vacuumed = {name: vacuum(config.output, name, retention) for name in tables.TABLES}
        expired_leases = leases.remove_dead(config.output)
        removed_plans, abandoned_plans = remove_finished_plans(config.output, retention)
    return MaintenanceReport(
        converted, completed, compacted, retention, vacuumed, expired_leases, removed_plans, abandoned_plans
    )


def remove_finished_plans(output: str, retention: Retention) -> tuple[list[str], list[str]]:
    """Remove the plans whose run committed (its driver stopped before removing the plan) and those of
    runs abandoned: never committed, no attempt holding the run id within the retention, and the plan
    itself older than it (vacuum took their parts by the same rule). Returns both lists of run ids.
    A live run's plan stays: its driver may be between its `images` commit and the update of `current`
    that reads the deletion marks beside the plan. The two tables' snapshots are loaded once, whatever
    the number of plans."""
    images, runs = tables.open_table(output, "images"), tables.open_table(output, "runs")
    now = leases.store_now(output)
    committed, abandoned = [], []
    for run_id in planned_run_ids(output):
        if run_id in retention.live:
            continue
        if images.transaction_version(run_id) is not None or runs.transaction_version(run_id) is not None:
            committed.append(run_id)
        elif run_id not in retention.held:
            written = plan_written(output, run_id)
            if written is None or now - written > retention.keep_hours * 3600:
                abandoned.append(run_id)
    for run_id in committed + abandoned:
        remove_plan(output, run_id)
    return committed, abandoned


def compact(output: str, table: str) -> tuple[int, int]:
    """Rewrite each partition's small files into few large ones; returns (files removed, files added)."""
    result = {}

    def attempt() -> None:
        result.update(tables.open_table(output, table).optimize.compact())

    tables.retry_conflicts(attempt)
    return int(result["numFilesRemoved"]), int(result["numFilesAdded"])


@dataclass(frozen=True)
class Retention:
    """What vacuum keeps, and why: every file younger than `keep_hours` by the store's clock."""

    keep_hours: int
    host_ahead_seconds: float
    """This host's clock minus the store's. delta-rs judges a file's age by this host's clock."""
    oldest_live_run: str | None = None
    """The live run that started first, which holds the retention up while it runs."""
    oldest_live_hours: float = 0.0
    held: frozenset[str] = frozenset()
    """Run ids whose lease was renewed within `keep_hours`: an attempt that held one may have stalled
    past its lease's expiry and still wake up, or be taken over and resumed."""
    live: frozenset[str] = frozenset()
    """Run ids whose lease is alive now."""

    @property
    def vacuum_hours(self) -> int:
        """The retention to hand delta-rs so that it keeps what `keep_hours` keeps by the store's clock."""
        return max(0, math.ceil(self.keep_hours + self.host_ahead_seconds / 3600))

    def describe(self) -> str:
        reasons = [f"files younger than {self.keep_hours} h by the store's clock are kept"]
        if self.oldest_live_run is not None:
            reasons.append(f"the oldest live run, {self.oldest_live_run}, started {self.oldest_live_hours:.2f} h ago")
        if abs(self.host_ahead_seconds) >= 60:
            reasons.append(
                f"this host's clock is {self.host_ahead_seconds / 3600:+.2f} h off the store's, so "
                f"vacuum is told {self.vacuum_hours} h"
            )
        return "; ".join(reasons)


def retention_for(output: str, hours: int) -> Retention:
    """The retention to vacuum with, by the store's clock: at least the floor, and past the start of
    every live run (a live run's files are younger than its lease's start as the store dates both)."""
    store_now, found = leases.store_now(output), leases.all_leases(output)
    live = sorted((lease for lease in found if lease.alive()), key=lambda lease: lease.record.started)
    oldest = (store_now - live[0].record.started) / 3600 if live else 0.0
    keep = max(hours, MIN_RETENTION_HOURS, math.ceil(oldest) + 1)
    return Retention(
        keep,
        time.time() - store_now,
        live[0].record.run_id if live else None,
        oldest,
        frozenset(lease.record.run_id for lease in found if lease.age <= keep * 3600),
        frozenset(lease.record.run_id for lease in live),
    )


def vacuum(output: str, table: str, retention: Retention) -> int:
    """Delete the table's unreferenced files older than the retention, except those of a run that may
    still be committed to it; returns how many were deleted.

    Delta's own vacuum judges a file by its age alone. A run partition's file that no version lists
    yet may still be committed: its run is in `images` but not yet in this table (a driver died
    between the two commits and the next roll-forward commits its recorded parts), or its attempt's
    lease was renewed within the retention (an attempt that stalled past its lease's expiry can
    still wake up and commit, and a takeover resumes its parts). Those files are kept whatever their
    age; delta-rs lists the candidates and the rest are deleted here."""
    delta = tables.open_table(output, table)
    candidates = delta.vacuum(
        retention_hours=retention.vacuum_hours, dry_run=True, enforce_retention_duration=False, full=True
    )
    kept = pending_runs(output, table, retention.held) if table in tables.PARTITIONED else set()
    doomed = [path for path in candidates if _run_of(path) not in kept]
    if doomed:
        fs, root = filesystem(tables.table_uri(output, table))
        fs.rm([f"{root}/{path}" for path in doomed])
    delta.create_checkpoint()
    delta.cleanup_metadata()
    return len(doomed)


def pending_runs(output: str, table: str, held: frozenset[str]) -> set[str]:
    """Run ids whose files in `table` no version lists yet but a commit may still list (the `held` ones
    among them)."""
    committed = tables.open_table(output, table)
    rollable = set(tables.committed_run_ids(output)) if table != "images" else set()
    return {run_id for run_id in rollable | held if committed.transaction_version(run_id) is None}


def _run_of(path: str) -> str | None:
    """The run id of a partition file's relative path (`run_id=<id>/...`)."""
    head = path.split("/", 1)[0]
    return head[len("run_id=") :] if head.startswith("run_id=") else None
