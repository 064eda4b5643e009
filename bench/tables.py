"""Benchmark: the cost of committing to and reading the Delta tables, against the earlier layout.

    python bench/tables.py [--parts 1000] [--runs 100] [--images-per-run 50]

1. Commit time of one run of N parts: the Delta commit (images, then class_stats, current and
   runs) against the earlier layout's commit (list the run's folders, write a JSON manifest).
2. `query.py summary` (current rows, per-class totals) over R committed runs, against the earlier
   reader (read every manifest, scan the listed files, pick current rows with a window), and the
   same summary once `maintain.py` has compacted the tables.
The earlier layout is restated here in a few lines (it is gone from jobs/) so both run side by side.
Parts are synthetic: small rows of the real schemas, as a run of tiny images would write.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pyarrow as pa
import pyarrow.dataset as pads

from common import print_table  # noqa: F401  (puts the project on the path)
from jobs.output import tables
from jobs.output.maintenance import maintain, MaintainConfig
from jobs.results.query import QueryConfig, run_query
from jobs.output.readers import SUMMARY_SQL
from synthetic import run_record, write_part


def delta_commit(output: str, run_id: str, parts: list[tables.Part]) -> None:
    tables.commit_run(output, run_record(run_id, sum(p.rows for p in parts)), parts)


def earlier_commit(output: str, run_id: str, parts: list[tables.Part]) -> None:
    """The earlier layout's commit: list the run's folders (to drop strays), then write the manifest."""
    listed = {t: sorted(os.listdir(os.path.join(output, t, f"run_id={run_id}"))) for t in ("images", "class_stats")}
    manifest = {
        **run_record(run_id, sum(p.rows for p in parts)).commit_metadata(),
        "status": "committed",
        "files": {t: [f"{t}/run_id={run_id}/{n}" for n in names] for t, names in listed.items()},
    }
    os.makedirs(os.path.join(output, "runs"), exist_ok=True)
    with open(os.path.join(output, "runs", f"{run_id}.json"), "w") as handle:
        json.dump(manifest, handle)


def earlier_summary(output: str) -> pa.Table:
    """The earlier reader: every manifest, a dataset over the listed files, current rows by a window."""
    import duckdb

    folder = os.path.join(output, "runs")
    manifests = [json.load(open(os.path.join(folder, n))) for n in sorted(os.listdir(folder)) if n.endswith(".json")]
    con = duckdb.connect()
    con.register(
        "runs", pa.Table.from_pylist([{"run_id": m["run_id"], "committed_at": m["committed_at"]} for m in manifests])
    )
    partitioning = pads.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive")
    for table in ("images", "class_stats"):
        paths = [os.path.join(output, name) for m in manifests for name in m["files"][table]]
        con.register(
            table,
            pads.dataset(
                paths, format="parquet", partitioning=partitioning, partition_base_dir=os.path.join(output, table)
            ),
        )
    con.execute("""CREATE VIEW current_images AS SELECT i.image_id, i.run_id FROM images i JOIN runs r USING (run_id)
                   QUALIFY row_number() OVER (PARTITION BY i.image_id ORDER BY r.committed_at DESC) = 1""")
    con.execute("""CREATE VIEW scope_class_stats AS SELECT c.* FROM class_stats c
                   SEMI JOIN current_images k ON c.image_id = k.image_id AND c.run_id = k.run_id""")
    return con.sql(SUMMARY_SQL).to_arrow_table()


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_commit(parts: int) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory() as delta_root, tempfile.TemporaryDirectory() as earlier_root:
        tables.ensure_tables(delta_root)
        for name, root, commit in (
            ("Delta tables", delta_root, delta_commit),
            ("earlier manifest", earlier_root, earlier_commit),
        ):
            written = [write_part(root, "big", index * 4, 4) for index in range(parts)]
            rows.append([f"commit, {parts} parts", name, timed(lambda: commit(root, "big", written))])  # noqa: B023 (called here)
    return rows


def bench_summary(runs: int, per_run: int) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory() as delta_root, tempfile.TemporaryDirectory() as earlier_root:
        tables.ensure_tables(delta_root)
        for index in range(runs):  # each run redoes a fifth of the last run's images and adds new ones
            first = index * per_run * 4 // 5
            for root, commit in ((delta_root, delta_commit), (earlier_root, earlier_commit)):
                commit(root, f"run{index:03d}", [write_part(root, f"run{index:03d}", first, per_run)])
        args = QueryConfig(delta_root, "summary")
        delta = timed(lambda: run_query(args))
        earlier = timed(lambda: earlier_summary(earlier_root))
        same = run_query(args).to_pylist() == earlier_summary(earlier_root).to_pylist()
        maintain(MaintainConfig(delta_root, retention_hours=1))
        compacted = timed(lambda: run_query(args))
        same = same and run_query(args).to_pylist() == earlier_summary(earlier_root).to_pylist()
        rows.append([f"summary, {runs} runs", "Delta tables", delta])
        rows.append([f"summary, {runs} runs", "Delta tables, after maintain.py", compacted])
        rows.append([f"summary, {runs} runs", "earlier manifest", earlier])
        print(f"summary results identical (before and after maintenance): {same}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--images-per-run", type=int, default=50)
    args = parser.parse_args()
    rows = bench_commit(args.parts) + bench_summary(args.runs, args.images_per_run)
    print_table(["what", "layout", "seconds"], rows)


if __name__ == "__main__":
    main()
