"""`current` at the cost of the run: committed runs of synthetic parts (no model, no Ray), read back
with deltalake itself."""

from __future__ import annotations

import threading

import pytest
from delta_read import delta_sql, delta_table
from synthetic import run_record, write_run

from jobs.output import tables


def commit(output: str, run_id: str, first: int, rows: int, version: str = "1") -> int:
    parts = write_run(output, run_id, first, rows, part_rows=50, version=version)
    return tables.commit_run(output, run_record(run_id, rows), parts)


def current_files(output: str) -> set[str]:
    return set(delta_table(output, "current").file_uris())


@pytest.fixture()
def root(tmp_path) -> str:
    output = str(tmp_path / "out")
    tables.ensure_tables(output)
    return output


def test_new_images_are_appended_without_touching_the_files_current_holds(root):
    commit(root, "first", 0, 200)
    before = current_files(root)
    commit(root, "second", 200, 150)
    assert before < current_files(root)  # every earlier file kept as it was, new ones beside them
    rows = delta_sql(root, "SELECT run_id, count(*) AS n FROM current GROUP BY run_id ORDER BY run_id").to_pylist()
    assert rows == [{"run_id": "first", "n": 200}, {"run_id": "second", "n": 150}]


@pytest.mark.parametrize("path", ["replace", "merge"])
def test_a_run_that_updates_images_rewrites_each_current_file_once_and_adds_the_new(root, path, monkeypatch):
    """A run that updates a few images replaces their rows by key; one that updates many, by a merge."""
    monkeypatch.setattr(tables, "REPLACE_MAX", 10_000 if path == "replace" else 0)
    commit(root, "first", 0, 200)
    versions_before = delta_table(root, "current").version()
    commit(root, "second", 100, 200, version="2")  # images 100..199 change, 200..299 are new
    history = [e for e in delta_table(root, "current").history() if e["version"] > versions_before]
    assert sorted(e["operation"] for e in history) == (["WRITE", "WRITE"] if path == "replace" else ["MERGE", "WRITE"])
    counts = delta_sql(
        root, "SELECT source_version, run_id, count(*) AS n FROM current GROUP BY ALL ORDER BY run_id"
    ).to_pylist()
    assert counts == [
        {"source_version": "1", "run_id": "first", "n": 100},
        {"source_version": "2", "run_id": "second", "n": 200},
    ]


@pytest.mark.parametrize("round", range(3))
def test_runs_completing_at_once_with_the_same_new_images_leave_one_row_per_image(root, round):
    """Both runs see the images as new in the same snapshot: the later append must fail on the version
    the earlier took and, tried again, find them there. (With delta-rs' own retry, which lets a blind
    append through, two of three rounds here left every image twice.)"""
    runs = {name: write_run(root, name, 0, 120, part_rows=40) for name in ("left", "right")}
    barrier = threading.Barrier(2)
    failures = []

    def finish(name: str) -> None:
        barrier.wait()
        try:
            tables.commit_run(root, run_record(name, 120), runs[name])
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            failures.append(exc)

    threads = [threading.Thread(target=finish, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert delta_sql(root, "SELECT count(*) AS n, count(DISTINCT image_uri) AS d FROM current").to_pylist() == [
        {"n": 120, "d": 120}
    ]
    assert delta_sql(root, "SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 2}]


@pytest.mark.parametrize("path", ["replace", "merge"])
def test_an_update_reads_and_rewrites_only_the_current_files_that_hold_the_updated_images(root, path, monkeypatch):
    """Issue 27.6: delta-rs streams the merge's source, which turns off its pruning by the source's keys,
    so a run updating 5 images read every file of `current` (12 of 12). A merge now skips the files
    outside the updated key range; a replace by key rewrites only the file that holds them."""
    monkeypatch.setattr(tables, "REPLACE_MAX", 10_000 if path == "replace" else 0)
    for night in range(12):
        commit(root, f"night-{night:02d}", night * 100, 100)
    commit(root, "updates", 300, 5, version="2")  # five images of night-03's range change
    latest = delta_table(root, "current").history(limit=1)[0]
    metrics = latest["operationMetrics"]
    if path == "merge":
        assert latest["operation"] == "MERGE"
        assert (metrics["num_target_files_scanned"], metrics["num_target_files_skipped_during_scan"]) == (1, 11)
    else:
        assert latest["operation"] == "WRITE" and (metrics["num_removed_files"], metrics["num_added_rows"]) == (1, 5)
    changed = delta_sql(root, "SELECT count(*) AS n FROM current WHERE source_version = '2'").column("n")[0].as_py()
    assert changed == 5
