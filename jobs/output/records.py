"""A committed run's record: its row of the `runs` table, and the facts its `images` commit carries
so that whoever finds the run unfinished can complete it (`jobs.output.tables.complete_pending`).

The fields declared with `column` are the `runs` table's columns, in its order: the table's schema
is read from this class, so a column is added here once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import pyarrow as pa

from jobs.common.errors import UserError
from jobs.output.columns import TIMESTAMP


def column(arrow_type: pa.DataType) -> Any:
    """A field that is a column of `runs`, of this Arrow type; a record of an earlier release that
    lacks it reads it as null, as the table does."""
    return field(default=None, metadata={"arrow": arrow_type})


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What one run did: counts, model, timings, and where its time went."""

    run_id: str = column(pa.string())
    started_at: dt.datetime | None = column(TIMESTAMP)
    committed_at: dt.datetime | None = column(TIMESTAMP)
    commit_version: int | None = column(pa.int64())
    """The `images` version that committed the run (its place in commit order); None for an empty run."""
    inputs: int | None = column(pa.int64())
    skipped: int | None = column(pa.int64())
    processed: int | None = column(pa.int64())
    ok: int | None = column(pa.int64())
    errors: int | None = column(pa.int64())
    model_name: str | None = column(pa.string())
    model_sha256: str | None = column(pa.string())
    model_uri: str | None = column(pa.string())
    class_names: tuple[str, ...] | None = column(pa.list_(pa.string()))
    class_pixels: tuple[int, ...] | None = column(pa.list_(pa.int64()))
    wall_seconds: float | None = column(pa.float64())
    images_per_second: float | None = column(pa.float64())
    replicas: str | None = column(pa.string())
    """JSON: every replica that segmented images in the run (node, GPUs, TensorFlow device)."""
    config: str | None = column(pa.string())
    """JSON: the run's whole config."""
    resumed: int | None = column(pa.int64())
    """Images kept from an earlier attempt; null in records of releases before resuming existed."""
    read_seconds: float | None = column(pa.float64())
    decode_seconds: float | None = column(pa.float64())
    model_seconds: float | None = column(pa.float64())
    postprocess_seconds: float | None = column(pa.float64())
    write_seconds: float | None = column(pa.float64())
    cpus_per_replica: float | None = column(pa.float64())
    bound_by: str | None = column(pa.string())
    lease_generation: int | None = None
    """The attempt's lease generation: the fencing token it committed under (commit metadata only)."""
    listed_at: str | None = None
    """When the run's listing began, by the store's clock: orders image versions in `current`."""
    marks: bool = False
    """Whether the run's listing left deletion marks for `current` beside its plan."""

    def commit_metadata(self) -> dict[str, Any]:
        """The record as it rides in the run's `images` commit (JSON)."""
        facts = asdict(self)
        for name in ("started_at", "committed_at"):
            facts[name] = facts[name] and facts[name].isoformat(timespec="microseconds")
        return facts

    def row(self) -> dict[str, Any]:
        """The record as its row of `runs`."""
        return {name: getattr(self, name) for name in RUNS_SCHEMA.names}

    def with_version(self, version: int | None) -> RunRecord:
        return replace(self, commit_version=version)

    @classmethod
    def read(cls, facts: dict[str, Any]) -> RunRecord:
        """A record read back (a commit's metadata, a row of `runs`): the fields this release knows,
        those a record of an earlier release lacks read as null."""
        known = {f.name for f in fields(cls)}
        values = {name: value for name, value in facts.items() if name in known}
        for name in ("started_at", "committed_at"):
            if isinstance(values.get(name), str):
                values[name] = _time(values.get("run_id"), name, values[name])
        for name in ("class_names", "class_pixels"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)


def _time(run_id: Any, name: str, value: str) -> dt.datetime:
    """A time read from the store: anything but an ISO time is refused by name, not deep in a commit."""
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise UserError(
            f"run {str(run_id)[:80]}: its record's {name} {value[:80]!r} is not a time stamp; the store was "
            "written by something other than this job"
        ) from None


RUNS_SCHEMA = pa.schema([(f.name, f.metadata["arrow"]) for f in fields(RunRecord) if "arrow" in f.metadata])
"""The `runs` table's columns, from the record's."""
