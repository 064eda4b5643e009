"""Keeping a root healthy: finish interrupted commits, compact small files, vacuum what no
commit lists, convert roots of the earlier layout."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from jobs.common.errors import UserError
from jobs.output import leases, legacy, tables
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
