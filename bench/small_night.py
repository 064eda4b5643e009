"""Benchmark: a small nightly run against a root with a long history costs what the night holds.

    python bench/small_night.py [--others 0 5000000 20000000] [--earlier-runs 1000]
                                [--planning-done 100000000] [--work DIR] [--vs CHECKOUT]

The night: 1,000 images through `jobs/segment.py --incremental` as a whole process (local Ray started
by the job, a tiny model: the night's own work is small on purpose, so what grows with the root
shows), of which 100 were segmented by an earlier run and have since changed (a new version to
redo, merged into `current`) and 900 are new (appended). It runs into copies of one root that holds
those 100 results and `--earlier-runs` earlier runs of one image each (each a commit of `images`,
`class_stats`, `current` and `runs`), and into copies to which `--others` rows of other images, done
by the same model, were appended to `current` under its own schema. The night names its images in a
list file, and the other rows' URIs sort between them (`img_0042-<n>.png` beside `img_0042.png`):
the hard case, where no key range of the night leaves any of `current` unread (a folder listed
whole is one key range, which the job's readers skip around). Each night's wall time and its
ratio to the first are printed (with `--vs`, also those of another checkout's job, each night run
with both in turn). Target: at most 1.3x at 20 million.

Then the planning step alone (`make_plan` with the `--incremental` selection, in a fresh process) for
the same 1,000 listed images against a `current` of `--planning-done` rows: seconds and peak RSS
growth over the post-import baseline.

Everything is written once under --work and reused by later runs (20 million rows of `current` take
a few minutes to write; 100 million about 4 GB of disk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import ROOT, print_table
from driver_memory import current_rss, earlier_batches, peak_rss

NIGHT_IMAGES, UPDATED = 1000, 100


def prepare_images(folder: Path, version: int, count: int) -> None:
    """Images 0..count-1 as PNGs; each `version` draws other pixels, so a rewritten file is a new version."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(version)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(folder / f"img_{index:04d}.png")


def tiny_model(folder: Path) -> str:
    import keras

    from unet_core import build_unet, save_artifact

    uri = str(folder / "tiny")
    if not (Path(uri) / "metadata.json").exists():
        keras.utils.set_random_seed(0)
        save_artifact(build_unet(3, (32, 32, 3), base_filters=4), uri, ["background", "thing", "stuff"], name="tiny")
    return uri


def list_file(work: Path, name: str, count: int) -> Path:
    """A list file naming images 0..count-1 of the images folder."""
    path = work / f"{name}.txt"
    path.write_text("".join(f"{work / 'images' / f'img_{index:04d}.png'}\n" for index in range(count)))
    return path


def segment(images: Path, output: Path, model: str, run_id: str, checkout: Path) -> float:
    """One `--incremental` run as a whole process (of `checkout`'s job: a local Ray of its own, or the
    cluster RAY_ADDRESS names); its wall time."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # its own `jobs`, not the one this environment installed
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            str(checkout / "jobs" / "segment.py"),
            "--input",
            str(images),
            "--output",
            str(output),
            "--model",
            model,
            "--incremental",
            "--run-id",
            run_id,
            "--batch-size",
            "32",
        ],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"segment.py into {output} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def add_earlier_runs(output: Path, runs: int) -> None:
    """`runs` committed runs of one synthetic image each: a history of nights in every table."""
    from synthetic import run_record, write_run

    from jobs.output import tables

    for index in range(runs):
        run_id = f"earlier-{index:05d}"
        parts = write_run(str(output), run_id, 10_000_000 + index, 1, part_rows=1)
        tables.commit_run(str(output), run_record(run_id, 1), parts)
    tables.complete_pending(str(output), lag=1)  # as the nightly maintain.py leaves the watermark: current


def append_others(output: Path, rows: int, model_sha256: str, images: Path) -> None:
    """`rows` results of other images by the same model, appended to `current` in one commit; their URIs
    sort between the night's (`img_0042-<n>.png` beside `img_0042.png`)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    from jobs.output.tables import delta_uri, open_table

    # under the table's own schema: a root an earlier version wrote keeps its columns, so that version's
    # job can run the night into it too (this one adds its new columns when a run starts)
    schema = pa.schema(open_table(str(output), "current").schema().to_arrow())

    def interleaved():
        start = 0
        for batch in earlier_batches(rows, model_sha256):
            ids = np.arange(start, start + batch.num_rows)
            start += batch.num_rows
            uris = pc.binary_join_element_wise(
                f"{images}/img_",
                pc.utf8_lpad(pc.cast(pa.array(ids % NIGHT_IMAGES), pa.string()), 4, "0"),
                "-",
                pc.cast(pa.array(ids), pa.string()),
                ".png",
                "",
            )
            batch = batch.set_column(batch.schema.get_field_index("image_uri"), "image_uri", uris)
            yield pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) for f in schema], schema=schema)

    reader = pa.RecordBatchReader.from_batches(schema, interleaved())
    write_deltalake(delta_uri(str(output), "current"), reader, mode="append")


def prepare(work: Path, others: list[int], earlier_runs: int, planning_done: int, writer: Path) -> None:
    """The roots, written once by `writer`'s code (this process runs with its `jobs` first on the path)."""
    from jobs.inference.model import model_info

    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(work)
    sha = model_info(model, False).sha256
    (work / "model.sha256").write_text(sha)
    images, base = work / "images", work / "root-base"
    if not (base / "runs" / "_delta_log").exists():
        shutil.rmtree(base, ignore_errors=True)
        prepare_images(images, version=1, count=UPDATED)
        segment(list_file(work, "first", UPDATED), base, model, "first", writer)
        started = time.perf_counter()
        add_earlier_runs(base, earlier_runs)
        print(f"committed {earlier_runs} earlier runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        prepare_images(images, version=2, count=NIGHT_IMAGES)  # the 100 changed, 900 new
    list_file(work, "night", NIGHT_IMAGES)
    for count in others:
        root = work / f"root-{count}"
        if count and not (root / "ready").exists():
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(base, root)
            started = time.perf_counter()
            append_others(root, count, sha, images)
            (root / "ready").touch()
            print(f"appended {count:,} rows to current in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    planning = work / f"planning-{planning_done}"
    if planning_done and not (planning / "ready").exists():
        shutil.rmtree(planning, ignore_errors=True)
        from jobs.output.tables import ensure_tables

        ensure_tables(str(planning))
        append_others(planning, planning_done, sha, images)
        (planning / "ready").touch()


def night(work: Path, count: int, checkout: Path) -> float:
    """The night into a fresh copy of the root (the night changes it)."""
    source = work / (f"root-{count}" if count else "root-base")
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        copy = Path(scratch) / "root"
        shutil.copytree(source, copy)
        return segment(work / "night.txt", copy, str(work / "tiny"), "night", checkout)


def measure_planning(images: str, output: str, model_sha256: str) -> dict:
    """In this fresh process: planning the night against `output`, its seconds and peak RSS growth."""
    import deltalake  # noqa: F401  (imported by the driver before it lists)
    import duckdb  # noqa: F401

    from jobs.output.incremental import Selection
    from jobs.output.plans import Plan, make_plan, remove_plan
    from jobs.storage.listing import iter_listing

    header = Plan(
        "planning",
        inputs=0,
        skipped=0,
        planned=0,
        listed_at="2026-01-01T00:00:00+00:00",
        model_sha256=model_sha256,
        sources=[images],
        shards=0,
    )
    baseline = current_rss()
    started = time.perf_counter()
    plan = make_plan(output, header, iter_listing([images]), Selection(model_sha256, False))
    result = {"seconds": time.perf_counter() - started, "grown": peak_rss() - baseline, "planned": plan.planned}
    remove_plan(output, "planning")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--others", type=int, nargs="+", default=[0, 5_000_000, 20_000_000])
    parser.add_argument("--earlier-runs", type=int, default=1000)
    parser.add_argument("--planning-done", type=int, default=100_000_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-small-night")
    parser.add_argument("--vs", type=Path, help="another checkout whose jobs/segment.py runs each night too")
    parser.add_argument("--measure-planning", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--writer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_planning:
        print(json.dumps(measure_planning(*args.measure_planning)))
        return
    if args.prepare:
        sys.path.insert(0, str(args.writer))  # its `jobs` before the one common.py put on the path
        prepare(args.work, args.others, args.earlier_runs, args.planning_done, args.writer)
        return
    # in a child: this process stays small, so the planning measurement's child starts with a small peak RSS;
    # with --vs, the roots are written by that (earlier) checkout's code, whose tables this one's job upgrades
    oldest = args.vs or ROOT
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--prepare",
            "--work",
            str(args.work),
            "--others",
            *map(str, args.others),
            "--earlier-runs",
            str(args.earlier_runs),
            "--planning-done",
            str(args.planning_done),
            "--writer",
            str(oldest),
        ],
        cwd=ROOT,
        check=True,
    )
    checkouts = {"this": ROOT, **({"vs": args.vs} if args.vs else {})}
    walls = {
        (name, count): night(args.work, count, checkout)
        for count in args.others
        for name, checkout in checkouts.items()
    }  # alternated, so drift in the machine hits both
    print(
        f"a night of {NIGHT_IMAGES:,} images ({NIGHT_IMAGES - UPDATED} new, {UPDATED} updated), --incremental, "
        f"into a root with {args.earlier_runs:,} earlier runs" + (f"; vs: {args.vs}" if args.vs else "")
    )
    header, rows = ["other rows in current"], [[f"{count:,}"] for count in args.others]
    for name in checkouts:
        header += [f"{name} wall s", f"{name} ratio"]
        for row, count in zip(rows, args.others):
            row += [walls[name, count], walls[name, count] / walls[name, args.others[0]]]
    print_table(header, rows)
    if args.planning_done:
        sha = (args.work / "model.sha256").read_text()
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--measure-planning",
                str(args.work / "night.txt"),
                str(args.work / f"planning-{args.planning_done}"),
                sha,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"planning failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"planning alone: {NIGHT_IMAGES:,} listed against {args.planning_done:,} done rows: "
            f"{result['seconds']:.1f} s, peak RSS growth {result['grown'] / 2**20:.0f} MiB, "
            f"{result['planned']:,} planned"
        )


if __name__ == "__main__":
    main()
