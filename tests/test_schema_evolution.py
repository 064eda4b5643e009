"""A root written by the release before the quality signals (its own code, from the git history) gains
their float columns at the next commit: old rows read them as null, new rows carry them, with deltalake
and through review and drift. Runs of synthetic parts, no model, no Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from delta_read import delta_sql, delta_table
from synthetic import run_record, write_run

from jobs.output import tables
from jobs.query import parse_args
from jobs.results.query import run_drift, run_review
from unet_core.quality import SIGNALS

ROOT = Path(__file__).resolve().parent.parent
BEFORE_SIGNALS = "5ed1337"
"""The last commit whose tables had no signal columns."""

OLD_RUN = """
import sys
from synthetic import run_record, write_run
from jobs.output import tables
root = sys.argv[1]
tables.ensure_tables(root)
tables.commit_run(root, run_record("old", 40), write_run(root, "old", 0, 40, part_rows=20))
"""


@pytest.fixture()
def old_root(tmp_path) -> str:
    """A root with one run committed by the code of BEFORE_SIGNALS."""
    archive = tmp_path / "old.tar"
    made = subprocess.run(
        ["git", "archive", "-o", str(archive), BEFORE_SIGNALS, "jobs", "unet_core", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if made.returncode:
        pytest.skip(f"needs the git history back to {BEFORE_SIGNALS}: {made.stderr.strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "old", filter="data")
    root = str(tmp_path / "out")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'old'}{os.pathsep}{tmp_path / 'old' / 'bench'}"}
    done = subprocess.run(
        [sys.executable, "-c", OLD_RUN, root], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_a_root_written_before_the_signals_gains_their_columns(old_root):
    assert not set(SIGNALS) & set(delta_table(old_root, "images").schema().to_arrow().names)
    tables.ensure_tables(old_root)
    tables.commit_run(old_root, run_record("new", 30), write_run(old_root, "new", 100, 30, part_rows=30))
    for table in ("images", "current"):
        assert set(SIGNALS) <= set(delta_table(old_root, table).schema().to_arrow().names), table
        signals = ", ".join(f"count({name})" for name in SIGNALS)
        rows = delta_sql(old_root, f"SELECT run_id, count(*), {signals} FROM {table} GROUP BY run_id ORDER BY run_id")
        assert [list(row.values()) for row in rows.to_pylist()] == [
            ["new", 30, *[30] * len(SIGNALS)],  # every new row holds every signal (flip disagreement too, here)
            ["old", 40, *[0] * len(SIGNALS)],  # the old rows read them as null
        ]
    ranked, unsignalled = run_review(parse_args(["--output", old_root, "review", "--limit", "100"]))
    assert ranked.num_rows == 30 and unsignalled == 40 and set(ranked.column("run_id").to_pylist()) == {"new"}
    drift = run_drift(parse_args(["--output", old_root, "drift", "--run", "new"]))
    assert drift.baseline_runs == ["old"] and drift.unsignalled_runs == ["old"]
    assert {row["measure"] for row in drift.rows.to_pylist()} == {"pixel share", "image share"}  # no signal to compare
