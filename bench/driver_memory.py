"""Benchmark: the driver's memory for planning a run: listing the inputs, the `--incremental`
selection, and writing the plan.

    python bench/driver_memory.py [--rows 2000000 20000000] [--work DIR]

Each case runs in a fresh process, which imports what the driver imports, takes its resident
memory as the baseline, runs the driver's planning code of `segment.py` (`make_plan` over
`iter_listing` of a list file, with or without the selection against an output root) and reports
its peak RSS (ru_maxrss) minus the baseline. For N listed images the cases are:

- plain: the plan of a list file of N rows (each URI once, the plan's shards written);
- incremental: the same against a `current` of N earlier rows, 1% of them for an earlier ETag, so
  that 1% of the listed images are selected again;
- resume: an attempt resuming the plan of N images whose dead attempt left parts holding 95% of
  them (parts of 2,048 images, as `--rows-per-file` writes): taking stock of the kept parts and
  writing the shards of what is left (`kept_parts`, `remaining`).

The target: growth at most 1 GiB at 20 million images, and at most 1.2x from 2 to 20 million (the
resume's stock-taking: under 1 GiB at 19 million kept images).

The inputs are synthetic and written once under --work: Parquet list files of S3 URIs (65
characters) with `size`, `etag` and `last_modified` columns in row groups of DuckDB's size, rows in
a scrambled order, and real Delta `current` tables under output roots (written by deltalake with
the job's schema), which the selection reads from their committed Parquet files just as it reads a
real one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import ROOT, print_table

MODEL_SHA256 = "ab" * 32
CHUNK = 1_000_000
SCRAMBLE = 1_000_003
"""Prime multiplier: row i of a list file of N rows names image (i * SCRAMBLE) mod N, a bijection."""
ROW_GROUP_ROWS = 122_880
"""DuckDB's row group size: what `COPY ... TO 'list.parquet'` in the README's inventory recipe writes."""
SLOW_CASE_SECONDS = 180
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def uris(ids: np.ndarray) -> pa.Array:
    """s3://acme-photo-archive/raw/2024/MM/DD/cam-CCCC/IMG_NNNNNNNNN.jpg (65 characters)."""

    def padded(values: np.ndarray, width: int) -> pa.Array:
        return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0")

    return pc.binary_join_element_wise(
        "s3://acme-photo-archive/raw/2024/",
        padded(1 + ids % 12, 2),
        "/",
        padded(1 + ids // 12 % 28, 2),
        "/cam-",
        padded(ids // 336 % 10_000, 4),
        "/IMG_",
        padded(ids, 9),
        ".jpg",
        "",
    )


def etags(ids: np.ndarray, salt: int = 0) -> pa.Array:
    """32 hex digits per image, a different one for each salt (a new version of the object)."""
    keys, salts = ids.astype(np.uint64), np.asarray(salt).astype(np.uint64)
    words = np.stack(
        [
            keys * np.uint64(0x9E3779B97F4A7C15) + salts,
            keys * np.uint64(0xC2B2AE3D27D4EB4F) + salts * np.uint64(7) + np.uint64(1),
        ],
        axis=1,
    )
    nibbles = words.astype(">u8").view(np.uint8).reshape(len(ids), 16)
    text = np.stack([HEX[nibbles >> 4], HEX[nibbles & 15]], axis=2).reshape(-1)
    offsets = np.arange(0, 32 * len(ids) + 1, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


def about(ids: np.ndarray) -> dict[str, pa.Array]:
    return {
        "size": pa.array(100_000 + ids * 7_919 % 4_000_000),
        "last_modified": pa.array(1_700_000_000_000_000 + ids * 1_000_000).cast(pa.timestamp("us", "UTC")),
    }


def write_list_file(path: Path, rows: int) -> None:
    """A list file with the columns the README's inventory recipe writes: image_uri, size, etag, last_modified."""
    schema = pa.schema(
        [
            ("image_uri", pa.string()),
            ("size", pa.int64()),
            ("etag", pa.string()),
            ("last_modified", pa.timestamp("us", "UTC")),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, CHUNK):
            ids = np.arange(start, min(start + CHUNK, rows), dtype=np.int64) * SCRAMBLE % rows
            info = about(ids)
            writer.write_table(
                pa.table([uris(ids), info["size"], etags(ids), info["last_modified"]], schema=schema),
                row_group_size=ROW_GROUP_ROWS,
            )


def earlier_batches(rows: int, model_sha256: str = MODEL_SHA256):
    """`current` rows of images 0..rows-1 from one model; every 100th for an earlier version (ETag)."""
    from jobs.output.tables import SCHEMAS

    schema = SCHEMAS["current"]
    for start in range(0, rows, CHUNK):
        ids = np.arange(start, min(start + CHUNK, rows), dtype=np.int64)
        count, info = len(ids), about(ids)
        columns = {
            "image_id": pc.utf8_slice_codeunits(etags(ids, salt=99), 0, 20),
            "image_uri": uris(ids),
            "source_size": info["size"],
            "source_version": etags(ids, salt=(ids % 100 == 0).astype(np.int64)),
            "source_modified": info["last_modified"],
            "width": pa.repeat(pa.scalar(640, pa.int32()), count),
            "height": pa.repeat(pa.scalar(480, pa.int32()), count),
            "status": pa.repeat(pa.scalar("ok"), count),
            "model_name": pa.repeat(pa.scalar("seed"), count),
            "model_sha256": pa.repeat(pa.scalar(model_sha256), count),
            "processed_at": info["last_modified"],
            "run_id": pa.repeat(pa.scalar("night-1"), count),
            "commit_version": pa.repeat(pa.scalar(1, pa.int64()), count),
        }
        yield pa.RecordBatch.from_arrays(
            [columns[f.name] if f.name in columns else pa.nulls(count, f.type) for f in schema], schema=schema
        )


def write_output_root(root: Path, rows: int) -> None:
    """An output root whose `current` Delta table holds `rows` earlier results, in one commit."""
    from deltalake import write_deltalake

    from jobs.output.tables import SCHEMAS, delta_uri, ensure_tables

    ensure_tables(str(root))
    reader = pa.RecordBatchReader.from_batches(SCHEMAS["current"], earlier_batches(rows))
    write_deltalake(delta_uri(str(root), "current"), reader, mode="append")


KEPT_SHARE = 0.95
PART_ROWS = 2048


def write_resume_root(root: Path, list_file: Path) -> None:
    """A root with the plan of every image of `list_file` and a dead attempt's parts holding KEPT_SHARE of
    them (images and class_stats files with the footer facts a part carries; a URI column is all the
    resume reads of them)."""
    from jobs.output.parts import write_part
    from jobs.output.plans import Plan, make_plan
    from jobs.storage.listing import iter_listing

    header = Plan(
        "resumed",
        inputs=0,
        skipped=0,
        planned=0,
        listed_at="2026-01-01T00:00:00+00:00",
        model_sha256=MODEL_SHA256,
        sources=[str(list_file)],
        shards=0,
    )
    plan = make_plan(str(root), header, iter_listing([str(list_file)]), None)
    keep = int(plan.planned * KEPT_SHARE)
    written = 0
    for shard in range(plan.shards):
        uris = pq.read_table(root / "_plans" / "resumed" / f"shard-{shard:05d}.parquet", columns=["image_uri"])
        for start in range(0, uris.num_rows, PART_ROWS):
            rows = uris.slice(start, min(PART_ROWS, keep - written))
            if not rows.num_rows:
                return
            write_part(str(root), "resumed", rows, rows, {"ok": rows.num_rows, "class_pixels": [0], "replicas": "[]"})
            written += rows.num_rows


def measure_resume(output: str) -> dict:
    """In this fresh process: peak RSS growth of a resume's stock-taking over the post-import baseline."""
    import duckdb  # noqa: F401

    from jobs.output.parts import kept_files, kept_parts
    from jobs.output.plans import load_plan, remaining

    baseline = current_rss()
    started = time.perf_counter()
    plan = load_plan(output, "resumed")
    kept = kept_parts(output, "resumed")
    todo = remaining(output, plan, kept_files(output, "resumed", kept))
    result = {
        "baseline": baseline,
        "peak": peak_rss(),
        "seconds": time.perf_counter() - started,
        "listed": plan.planned,
        "planned": todo.rows,
        "kept": sum(int(row["rows"]) for row in kept),
    }
    for folder in (Path(output) / "_plans" / "resumed").glob("resumed-*"):  # the next measurement starts alike
        shutil.rmtree(folder)
    return result


def measure(list_file: str, output: str, incremental: bool) -> dict:
    """In this fresh process: peak RSS growth of planning over the post-import baseline."""
    import deltalake  # noqa: F401  (imported by the driver before it lists)
    import duckdb  # noqa: F401

    from jobs.output.incremental import Selection
    from jobs.output.plans import Plan, make_plan, remove_plan
    from jobs.storage.listing import iter_listing

    run_id = f"bench-{os.getpid()}"
    header = Plan(
        run_id,
        inputs=0,
        skipped=0,
        planned=0,
        listed_at="2026-01-01T00:00:00+00:00",
        model_sha256=MODEL_SHA256,
        sources=[list_file],
        shards=0,
    )
    baseline = current_rss()
    started = time.perf_counter()
    plan = make_plan(output, header, iter_listing([list_file]), Selection(MODEL_SHA256, False) if incremental else None)
    result = {
        "baseline": baseline,
        "peak": peak_rss(),
        "seconds": time.perf_counter() - started,
        "listed": plan.inputs,
        "planned": plan.planned,
    }
    remove_plan(output, run_id)
    return result


def current_rss() -> int:
    """Resident memory now: the baseline (the peak so far would hide what the imports freed)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def reset_peak() -> None:
    """Restart the peak RSS count from the resident memory now (Linux: /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


CASES = ("plain", "incremental", "resume")


def run_case(case: str, list_file: Path, output: Path, timeout: float) -> dict:
    """One case in a fresh process (started from this small one: a forked child starts with its
    parent's peak RSS). A case past `timeout` is reported as such, with what it printed."""
    command = [sys.executable, __file__, "--measure", case, str(list_file), str(output)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(
            f"{list_file.name} {case}: stopped after {timeout:.0f} s; it printed:\n{exc.stderr or ''}"
        ) from exc
    if done.returncode != 0:
        raise SystemExit(f"measuring {list_file} {case} failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - started
    if wall > SLOW_CASE_SECONDS:
        print(f"note: {list_file.name} {case} took {wall:.0f} s", file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(work: Path, rows: list[int]) -> None:
    """The list files and the output roots, written once and reused by later runs."""
    work.mkdir(parents=True, exist_ok=True)
    for count in rows:
        path = work / f"list-{count}.parquet"
        if not path.exists():
            started = time.perf_counter()
            write_list_file(path.with_suffix(".tmp"), count)
            path.with_suffix(".tmp").rename(path)
            print(f"wrote {path.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        root = work / f"output-{count}"
        if not (root / "current" / "_delta_log").exists():
            started = time.perf_counter()
            write_output_root(root, count)
            print(f"wrote {root.name}/current in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        resume = work / f"resume-{count}"
        if not (resume / "ready").exists():
            started = time.perf_counter()
            write_resume_root(resume, path)
            (resume / "ready").touch()
            print(f"wrote {resume.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def describe(case: str, count: int, result: dict) -> str:
    if case == "plain":
        return f"plain, {count:,} listed"
    if case == "incremental":
        return f"incremental, {count:,} listed against {count:,} earlier"
    return f"resume, {count:,} planned, {result['kept']:,} in kept parts"


def report(args: argparse.Namespace) -> None:
    table, grown = [], {}
    for case in CASES:
        for count in args.rows:
            output = args.work / (f"resume-{count}" if case == "resume" else f"output-{count}")
            result = run_case(case, args.work / f"list-{count}.parquet", output, args.timeout)
            grown[case, count] = result["peak"] - result["baseline"]
            table.append(
                [
                    describe(case, count, result),
                    f"{result['planned']:,}",
                    grown[case, count] / 2**20,
                    grown[case, count] / count,
                    result["seconds"],
                ]
            )
    print(f"peak RSS growth over the post-import baseline (baseline {result['baseline'] / 2**20:.0f} MiB)")
    print_table(["case", "planned (left)", "MiB", "bytes per image", "seconds"], table)
    low, high = min(args.rows), max(args.rows)
    for case in CASES:
        print(f"{case}: {high:,} / {low:,} images, peak growth {grown[case, high] / grown[case, low]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-driver-memory")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed per case (default: 1200)")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        case, list_file, output = args.measure
        result = measure_resume(output) if case == "resume" else measure(list_file, output, case == "incremental")
        print(json.dumps(result))
    elif args.prepare:
        prepare(args.work, args.rows)
    else:
        command = [sys.executable, __file__, "--prepare", "--work", str(args.work), "--rows", *map(str, args.rows)]
        subprocess.run(command, cwd=ROOT, check=True)  # in a child: this process stays small (see run_case)
        report(args)


if __name__ == "__main__":
    main()
