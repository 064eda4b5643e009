"""Benchmark: what committing a run costs as the root grows.

    python bench/commit_scale.py [--images 500000] [--part-rows 2048]

Runs of N new images are committed one after another into one root, so that they land on roots
already holding 0, N, 2N, 3N and 4N images; then a run of N images that all exist already (a new
version of each), and one of N of which half are new. Each row is the whole `commit_run` (the
`images` commit and the tables that follow from it) on local disk, parts as workers write them.

Two orders of new images: "interleaved" runs take every fifth number (run k: k, k+5, k+10, ...), so
each run's URIs fall between those already committed and `current`'s key column is read whole;
"appended" runs take the next N numbers, as a collection organised by date does, and the run's key
range skips every earlier file. The ratio is against the first commit of the same order.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import print_table
from synthetic import run_record, write_run

from jobs.output import tables

RUNS = 5


def commit(
    root: str, run_id: str, first: int, images: int, part_rows: int, version: str = "1", stride: int = 1
) -> float:
    parts = write_run(root, run_id, first, images, part_rows, version, stride)
    started = time.perf_counter()
    tables.commit_run(root, run_record(run_id, images), parts)
    return time.perf_counter() - started


def new_runs(n: int, part_rows: int, interleaved: bool) -> list[list]:
    order = "interleaved" if interleaved else "appended"
    rows = []
    with tempfile.TemporaryDirectory() as root:
        tables.ensure_tables(root)
        for index in range(RUNS):
            first, stride = (index, RUNS) if interleaved else (index * n, 1)
            rows.append(
                [
                    f"{n:,} new, {order}",
                    f"{index * n:,}",
                    commit(root, f"new{index}", first, n, part_rows, stride=stride),
                ]
            )
        if interleaved:
            held = RUNS * n  # run 0 holds 0, 5, 10, ...: update its first N, then N/2 of it and N/2 new
            rows.append([f"{n:,} updated", f"{held:,}", commit(root, "updated", 0, n, part_rows, "2", RUNS)])
            rows.append(
                [f"{n:,}, half new", f"{held:,}", commit(root, "half", RUNS * (n - n // 2), n, part_rows, "3", RUNS)]
            )
    return [[*row, row[2] / rows[0][2]] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500_000, help="N, the images of each run")
    parser.add_argument("--part-rows", type=int, default=2048, help="rows per part file")
    args = parser.parse_args()
    interleaved = new_runs(args.images, args.part_rows, interleaved=True)
    appended = new_runs(args.images, args.part_rows, interleaved=False)
    print_table(["run", "root holds", "seconds", "vs first"], interleaved + appended)
    for name, rows in (("interleaved", interleaved), ("appended", appended)):
        print(
            f"new images, {name}: last/first (root {(RUNS - 1) * args.images:,} against empty) {rows[RUNS - 1][3]:.2f}"
        )


if __name__ == "__main__":
    main()
