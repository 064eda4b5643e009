"""A run's record read back from the store: what this release wrote comes back equal, what an earlier
release wrote reads its missing fields as null (as the `runs` table does), and a time that is no time
is refused by name."""

from __future__ import annotations

import dataclasses
import json

import pytest
from synthetic import run_record

from jobs.common.errors import UserError
from jobs.output.records import RUNS_SCHEMA, RunRecord


def test_a_record_comes_back_from_its_commit_metadata_as_it_went():
    record = dataclasses.replace(run_record("night", 10), resumed=4, lease_generation=3, marks=True)
    assert RunRecord.read(json.loads(json.dumps(record.commit_metadata()))) == record


def test_an_earlier_releases_record_reads_what_it_lacks_as_null():
    old = {"run_id": "old", "started_at": "2026-01-02T03:04:05+00:00", "ok": 3, "class_stats_parts": []}
    record = RunRecord.read(old)
    assert (record.ok, record.resumed, record.class_names, record.bound_by) == (3, None, None, None)
    assert set(record.row()) == set(RUNS_SCHEMA.names)


def test_a_time_that_is_no_time_is_refused_naming_the_run():
    with pytest.raises(UserError, match="run forged: its record's started_at 'yesterday' is not a time stamp"):
        RunRecord.read({"run_id": "forged", "started_at": "yesterday"})
