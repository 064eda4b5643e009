"""Smoke runs of every bench/ script at a tiny size, so that the benchmarks cannot rot unnoticed.

Each test runs one script as a user would (a subprocess from the repository root), with the size
flags turned down, and checks that it prints the table or figures it promises. The numbers themselves
mean nothing at this size. Scripts that only run the jobs run them on the session's shared Ray head
(RAY_ADDRESS, as on a cluster); those that measure the processes of a local Ray (memory) or need the
workers to inherit S3 credentials start their own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ray_head import shared_head

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HELPERS = {"common.py", "synthetic.py"}
"""bench/ modules that are not benchmarks themselves."""
QUICK, WITH_RAY = 180, 420
"""Timeouts (s): scripts without Ray take seconds; each process that starts Ray ~10-30 s on 2 cores."""

pytestmark = [pytest.mark.bench, pytest.mark.ray]


def run_bench(script: str, *args: str, tmp_path: Path, timeout: float, shared_ray: bool = False) -> str:
    """Run bench/<script> with `args`; its stdout, after checking it exited 0. Temporary folders
    the script makes land under tmp_path (Ray keeps the folder it would have used anyway: its
    socket paths must stay short)."""
    env = shared_head().client_env() if shared_ray else {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_TMPDIR", os.environ.get("TMPDIR") or "/tmp")
    env["TMPDIR"] = str(tmp_path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"bench/{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done.stdout


def table(stdout: str, headers: list[str]) -> list[dict[str, str]]:
    """The rows of the table `common.print_table` printed with these column headers."""
    lines = stdout.splitlines()
    for index, line in enumerate(lines):
        if re.split(r"\s{2,}", line.strip()) == headers:
            assert index + 1 < len(lines) and set(lines[index + 1].replace(" ", "")) == {"-"}, stdout
            rows = []
            for row in lines[index + 2 :]:
                cells = re.split(r"\s{2,}", row.strip())
                if len(cells) != len(headers):
                    break
                rows.append(dict(zip(headers, cells)))
            assert rows, f"table {headers} has no rows:\n{stdout}"
            return rows
    raise AssertionError(f"no table with the columns {headers} in:\n{stdout}")


def numbers(rows: list[dict[str, str]], *columns: str) -> None:
    """Every cell of these columns is a finite number."""
    for row in rows:
        for column in columns:
            assert np.isfinite(float(row[column])), row


def test_gpu_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHON=sys.executable, TMPDIR=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault("RAY_TMPDIR", os.environ.get("TMPDIR") or "/tmp")
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WITH_RAY,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== bare model, XLA on, batch 2" in done.stdout and "== job, XLA on, bfloat16, batch 2" in done.stdout
    numbers(table(done.stdout, ["precision", "input", "images/s", "GFLOP/s", "peak GFLOP/s", "of peak"]), "images/s")
    numbers(table(done.stdout, ["what", "images", "seconds", "images/s", "efficiency"]), "images/s")
    numbers(table(done.stdout, ["stage", "previous", "today", "model-res"]), "previous", "today", "model-res")
    assert re.search(
        r"64x48 at [\d.]+ images/s per replica: cores per GPU for its CPU side: [\d.]+ \([\d.]+ with "
        r"--mask-resolution model, [\d.]+ on the previous path\)",
        done.stdout,
    ), done.stdout[-2000:]


def test_every_bench_script_has_a_smoke_test():
    scripts = sorted(p.stem for p in BENCH.glob("*.py") if p.name not in HELPERS)
    assert scripts
    missing = [s for s in scripts if not callable(globals().get(f"test_{s}"))]
    assert not missing, f"bench scripts without a smoke test here: {missing}"


def test_tables(tmp_path):
    out = run_bench(
        "tables.py", "--parts", "5", "--runs", "3", "--images-per-run", "4", tmp_path=tmp_path, timeout=QUICK
    )
    assert "summary results identical (before and after maintenance): True" in out
    rows = table(out, ["what", "layout", "seconds"])
    assert [(r["what"], r["layout"]) for r in rows] == [
        ("commit, 5 parts", "Delta tables"),
        ("commit, 5 parts", "earlier manifest"),
        ("summary, 3 runs", "Delta tables"),
        ("summary, 3 runs", "Delta tables, after maintain.py"),
        ("summary, 3 runs", "earlier manifest"),
    ]
    numbers(rows, "seconds")


def test_commit_scale(tmp_path):
    out = run_bench("commit_scale.py", "--images", "300", "--part-rows", "100", tmp_path=tmp_path, timeout=QUICK)
    rows = table(out, ["run", "root holds", "seconds", "vs first"])
    assert [(r["run"], r["root holds"]) for r in rows] == [
        *[("300 new, interleaved", f"{300 * k:,}") for k in range(5)],
        ("300 updated", "1,500"),
        ("300, half new", "1,500"),
        *[("300 new, appended", f"{300 * k:,}") for k in range(5)],
    ]
    numbers(rows, "seconds", "vs first")
    assert re.search(r"new images, appended: last/first \(root 1,200 against empty\) [\d.]+", out)


def test_listing(tmp_path):
    out = run_bench(
        "listing.py", "--keys", "60", "--folders", "6", "--latency-ms", "0", "5", tmp_path=tmp_path, timeout=QUICK
    )
    for latency in (0, 5):
        assert (
            f"latency {latency} ms: the same 60 keys from all four: True; the same times from all three parsers: True"
            in out
        )
    rows = table(out, ["latency ms", "listing", "seconds", "client CPU s", "keys/s", "speed-up"])
    listings = [
        "one paginator, botocore's timestamps",
        "one paginator",
        "one paginator, keys read by the listing",
        "16 listers, folder by folder",
    ]
    assert [(r["latency ms"], r["listing"]) for r in rows] == [
        (f"{ms}.000", name) for ms in (0, 5) for name in listings
    ]
    numbers(rows, "seconds", "client CPU s", "keys/s", "speed-up")


def test_driver_memory(tmp_path):
    out = run_bench(
        "driver_memory.py", "--rows", "1000", "2000", "--work", str(tmp_path / "work"), tmp_path=tmp_path, timeout=QUICK
    )
    rows = table(out, ["case", "planned (left)", "MiB", "bytes per image", "seconds"])
    # every listed image is planned; against as many earlier rows, the 1% seen at an earlier ETag; a
    # resume leaves the 5% that no kept part holds
    assert [(r["case"], r["planned (left)"]) for r in rows] == [
        ("plain, 1,000 listed", "1,000"),
        ("plain, 2,000 listed", "2,000"),
        ("incremental, 1,000 listed against 1,000 earlier", "10"),
        ("incremental, 2,000 listed against 2,000 earlier", "20"),
        ("resume, 1,000 planned, 950 in kept parts", "50"),
        ("resume, 2,000 planned, 1,900 in kept parts", "100"),
    ]
    numbers(rows, "MiB", "bytes per image", "seconds")
    assert re.search(r"incremental: 2,000 / 1,000 images, peak growth [\d.]+x", out)
    assert re.search(r"resume: 2,000 / 1,000 images, peak growth [\d.]+x", out)


def test_model_vs_hardware(tmp_path):
    out = run_bench(
        "model_vs_hardware.py",
        "--sizes",
        "32",
        "--base-filters",
        "4",
        "--matmul-sides",
        "256",
        "--repeats",
        "1",
        tmp_path=tmp_path,
        timeout=QUICK,
    )
    assert "seed U-Net base 4 forward (batch 2, median of 1) vs the best of 256^2 matmuls" in out
    rows = table(out, ["precision", "input", "images/s", "GFLOP/s", "peak GFLOP/s", "of peak"])
    assert [(r["precision"], r["input"]) for r in rows] == [
        ("float32", "32x32"),
        ("bfloat16", "32x32"),
        ("float16", "32x32"),
    ]
    numbers(rows, "images/s", "GFLOP/s", "peak GFLOP/s", "of peak")


def test_tile_memory(tmp_path):
    out = run_bench(
        "tile_memory.py",
        "--shapes",
        "64x64",
        "32x128",
        "--size",
        "32",
        "--base-filters",
        "4",
        tmp_path=tmp_path,
        timeout=QUICK,
    )
    assert "tile mode, one replica: seed U-Net 32x32 base 4, 21 classes" in out
    rows = table(out, ["image HxW", "megapixels", "peak growth MiB", "bytes per pixel", "seconds"])
    assert [(r["image HxW"], float(r["megapixels"])) for r in rows] == [("64x64", 0.004), ("32x128", 0.004)]
    numbers(rows, "peak growth MiB", "bytes per pixel", "seconds")


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory) -> dict[str, str]:
    """A narrow 32x32 two-class model and three labelled images (masks stored as 0/255, as ISBI's)."""
    import keras

    from unet_core import build_unet, save_artifact

    root = tmp_path_factory.mktemp("labelled")
    keras.utils.set_random_seed(0)
    save_artifact(
        build_unet(2, (32, 32, 3), base_filters=4), str(root / "model"), ["background", "thing"], name="tiny-two-class"
    )
    rng = np.random.default_rng(0)
    for kind in ("images", "masks"):
        (root / kind).mkdir()
    for index in range(3):
        mask = np.where(rng.random((30, 40)) < 0.3, 255, 0).astype(np.uint8)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "images" / f"{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"{index}.png")
    return {"model": str(root / "model"), "images": str(root / "images"), "masks": str(root / "masks")}


def test_precision_agreement(tmp_path, labelled_set):
    out = run_bench(
        "precision_agreement.py",
        "--model",
        labelled_set["model"],
        "--images",
        labelled_set["images"],
        "--masks",
        labelled_set["masks"],
        "--mask-map",
        "255:1",
        tmp_path=tmp_path,
        timeout=QUICK,
    )
    figures = re.search(
        r"3 labelled images, model tiny-two-class \(\w{12}\); bfloat16 vs float32 pixel agreement "
        r"([\d.]+), mIoU difference ([-+][\d.]+)",
        out,
    )
    assert figures, out
    assert 0 <= float(figures.group(1)) <= 1
    rows = table(out, ["precision", "mIoU", "pixel accuracy"])
    assert [r["precision"] for r in rows] == ["float32", "bfloat16"]
    assert all(0 <= float(r[c]) <= 1 for r in rows for c in ("mIoU", "pixel accuracy")), rows


def test_vs_user_loop(tmp_path):
    out = run_bench(
        "vs_user_loop.py",
        "--count",
        "2",
        "--size",
        "32",
        "--base-filters",
        "4",
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    assert "seed U-Net 32x32 base 4, 2 JPEG images 640x480" in out
    rows = table(out, ["what", "seconds", "images/s", "speedup"])
    assert [r["what"] for r in rows] == [
        "user's loop (model.predict per image, float32)",
        "segment.py, default flags (auto)",
    ]
    numbers(rows, "seconds", "images/s", "speedup")


def test_pipeline_vs_model(tmp_path):
    out = run_bench(
        "pipeline_vs_model.py",
        "--count",
        "2",
        "--size",
        "32",
        "--base-filters",
        "4",
        "--batch-size",
        "2",
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    assert re.search(r"seed U-Net 32x32 base 4, precision auto, batch 2, (auto|[\d.]+) CPUs per replica", out), out
    rows = table(out, ["what", "images", "seconds", "images/s", "efficiency"])
    assert [(r["what"], r["images"]) for r in rows] == [
        ("bare model forward", "2"),
        ("bare model forward, without the quality signals", "2"),
        ("job, end to end (N)", "2"),
        ("job, steady state (2N - N)", "2"),
    ]
    numbers(rows, "seconds", "images/s", "efficiency")
    assert re.search(r"the quality signals add [+-][\d.]+% to the bare model's time \(median of 1 turns each\)", out)


def test_memory(tmp_path):
    out = run_bench(
        "memory.py", "--count", "1", "--size", "32", "--base-filters", "4", tmp_path=tmp_path, timeout=WITH_RAY
    )
    assert re.search(r"segment.py, seed U-Net 32x32 base 4, default flags; memory ratio 10N/N = [\d.]+", out), out
    rows = table(out, ["images", "peak PSS MiB", "seconds"])
    assert [r["images"] for r in rows] == ["1", "10"]
    numbers(rows, "peak PSS MiB", "seconds")
    assert all(float(r["peak PSS MiB"]) > 0 for r in rows), rows


def test_s3_vs_local(tmp_path):
    out = run_bench(
        "s3_vs_local.py",
        "--images",
        "2",
        "--repeats",
        "1",
        "--size",
        "32",
        "--base-filters",
        "4",
        tmp_path=tmp_path,
        timeout=WITH_RAY,
    )
    assert "2 JPEG images of 32x32, model base_filters=4, 1 alternated runs each" in out
    for kind in ("local -> local", "s3 -> s3"):
        assert re.search(rf"^{kind} +process wall s: [\d.]+ +pipeline s: [\d.]+$", out, re.M), out
    ratios = json.loads(out.strip().splitlines()[-1])
    assert set(ratios) == {"s3_over_local_process_wall", "s3_over_local_pipeline"}
    assert all(value > 0 for value in ratios.values()), ratios


def test_train_throughput(tmp_path):
    out = run_bench(
        "train_throughput.py",
        "--size",
        "32",
        "--base-filters",
        "4",
        "--batch-size",
        "2",
        "--images",
        "8",
        "--val-images",
        "2",
        "--epochs",
        "2",
        "--workers",
        "1",
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    assert re.search(
        r"size 32, width 4, global batch 2, precision \w+; bare step [\d.]+ images/s before the jobs, "
        r"[\d.]+ after \(mean used\)",
        out,
    ), out
    rows = table(
        out,
        [
            "what",
            "processes",
            "precision",
            "images/s",
            "ratio",
            "ratio incl. validation",
            "waiting for data",
            "collectives and the rest",
            "epoch in validation",
        ],
    )
    assert [(r["what"], r["processes"]) for r in rows] == [("bare step", "1"), ("train.py, 1 worker(s)", "1")]
    numbers(rows, "images/s", "ratio")
    numbers(rows[1:], "ratio incl. validation")
    assert all(
        re.fullmatch(r"-?[\d.]+%", rows[1][c])
        for c in ("waiting for data", "collectives and the rest", "epoch in validation")
    ), rows


def isbi_like(root: Path) -> Path:
    """The ISBI 2012 layout bench/train_eval.py reads (isbi2012-membrane/train/{image,label}/0..29.png,
    greyscale, membranes stored as 255), at 48x48."""
    rng = np.random.default_rng(0)
    base = root / "isbi2012-membrane" / "train"
    for kind in ("image", "label"):
        (base / kind).mkdir(parents=True)
    for index in range(30):
        label = np.where(rng.random((48, 48)) < 0.2, 255, 0).astype(np.uint8)
        image = np.clip(200 - 0.6 * label + rng.normal(0, 10, label.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image, "L").save(base / "image" / f"{index}.png")
        Image.fromarray(label, "L").save(base / "label" / f"{index}.png")
    return root


def test_train_eval(tmp_path):
    # the documented ISBI recipe, with its size flags turned down through the pass-through to train.py
    out = run_bench(
        "train_eval.py",
        "isbi",
        "--data",
        str(isbi_like(tmp_path / "data")),
        "--work",
        str(tmp_path / "work"),
        "--epochs",
        "1",
        "--patch-size",
        "32",
        "--patches-per-image",
        "1",
        "--base-filters",
        "4",
        "--batch-size",
        "4",
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    assert "$ python jobs/train.py" in out and "$ python jobs/evaluate.py" in out
    lines = out.splitlines()
    figures = json.loads("\n".join(lines[len(lines) - 1 - lines[::-1].index("{") :]))
    assert figures["dataset"] == "isbi" and figures["held_out_images"] == 5
    assert set(figures["iou"]) == {"membrane", "cell"}
    for key in ("train_wall_seconds", "evaluate_wall_seconds", "pixel_error", "mean_iou"):
        assert figures[key] is not None and figures[key] >= 0, figures
    assert (Path(figures["model"]) / "metadata.json").exists()


def test_train_vs_keras(tmp_path):
    out = run_bench(
        "train_vs_keras.py",
        "--data",
        str(isbi_like(tmp_path / "data")),
        "--work",
        str(tmp_path / "work"),
        "--epochs",
        "1",
        "--patch-size",
        "32",
        "--base-filters",
        "4",
        "--keras-seconds",
        "3",
        "--batch-size",
        "4",
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    rows = table(out, ["arm", "wall s", "held-out pixel error", "membrane IoU", "cell IoU"])
    assert [row["arm"].split(" (")[0] for row in rows] == ["jobs/train.py", "keras fit"], rows
    for row in rows:
        assert 0.0 <= float(row["held-out pixel error"]) <= 1.0, row
    assert re.match(r"keras fit \([1-9]\d* epochs, [1-9]\d* steps\)", rows[1]["arm"]), rows


def test_small_night(tmp_path):
    out = run_bench(
        "small_night.py",
        "--others",
        "0",
        "--earlier-runs",
        "2",
        "--planning-done",
        "1000",
        "--work",
        str(tmp_path / "work"),
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    rows = table(out, ["other rows in current", "this wall s", "this ratio"])
    assert [(r["other rows in current"], r["this ratio"]) for r in rows] == [("0", "1.000")]
    numbers(rows, "this wall s", "this ratio")
    assert re.search(
        r"planning alone: 1,000 listed against 1,000 done rows: [\d.]+ s, peak RSS growth \d+ MiB, "
        r"1,000 planned",
        out,
    )


def test_cpu_side(tmp_path):
    out = run_bench(
        "cpu_side.py",
        "--sizes",
        "64x48",
        "--images",
        "2",
        "--repeats",
        "1",
        "--vs",
        str(ROOT),
        tmp_path=tmp_path,
        timeout=QUICK,
    )
    rows = table(out, ["stage", "previous", "today", "model-res"])
    assert [row["stage"] for row in rows] == [
        "decode + letterbox",
        "mask to full size",
        "class statistics",
        "mask PNG",
        "total",
        "total / floor",
    ]
    numbers(rows, "previous", "today", "model-res")
    stages = table(out, ["checkout", "ms per image", "x floor"])
    assert [row["checkout"] for row in stages] == ["this checkout", str(ROOT)]
    numbers(stages, "ms per image", "x floor")


def test_job_overhead(tmp_path):
    out = run_bench(
        "job_overhead.py",
        "--counts",
        "8:64x48",
        "--sample",
        "8",
        "--cpus-per-actor",
        "1",
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    rows = table(
        out,
        [
            "images",
            "N",
            "one process ms/image",
            "x cores: images/s",
            "job steady images/s",
            "ratio",
            "job model ms/image",
            "job CPU side ms/image",
            "bound by",
        ],
    )
    assert [(r["images"], r["N"]) for r in rows] == [("64x48", "8")]
    numbers(rows, "one process ms/image", "x cores: images/s", "job model ms/image", "job CPU side ms/image")
    assert rows[0]["bound by"] in ("model", "read", "decode", "postprocess", "write")


def test_init_scale(tmp_path):
    out = run_bench(
        "init_scale.py",
        "--base-filters",
        "2",
        "--size",
        "32",
        "--seeds",
        "1",
        "--learn-seeds",
        "1",
        "--learn-epochs",
        "1",
        tmp_path=tmp_path,
        timeout=QUICK,
    )
    rows = table(out, ["initialisation", "block 1", "block 2", "block 3", "block 4", "block 5", "block 5 / block 1"])
    assert [row["initialisation"] for row in rows] == [
        "as built, --normalization none",
        "He-normal encoder, no normalization",
        "as built, --normalization batch",
        "as built, --normalization group",
    ]
    numbers(rows, "block 1", "block 5", "block 5 / block 1")
    learnt = table(out, ["initialisation", "seed 0", "learnt"])
    assert [row["initialisation"] for row in learnt] == [row["initialisation"] for row in rows]
    numbers(learnt, "seed 0")


def test_train_robustness(tmp_path):
    out = run_bench(
        "train_robustness.py",
        "--seeds",
        "1",
        "--sets",
        "sparse-shapes",
        "--normalizations",
        "group",
        "--work",
        str(tmp_path / "work"),
        "--epochs",
        "1",
        "--patch-size",
        "32",
        "--patches-per-image",
        "1",
        "--base-filters",
        "4",
        "--batch-size",
        "4",
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    rows = table(out, ["set", "arm", "seed 0", "mean", "best", "collapsed"])
    assert [(row["set"], row["arm"]) for row in rows] == [("sparse-shapes", "--normalization group")]
    numbers(rows, "seed 0", "mean", "best")
    assert rows[0]["collapsed"] in ("0/1", "1/1")


def test_review_drift(tmp_path, tiny_artifact):
    out = run_bench(
        "review_drift.py",
        "--images",
        "3",
        "--novel",
        "1",
        "--model",
        tiny_artifact,
        "--no-tta-run",
        "--work",
        str(tmp_path / "work"),
        tmp_path=tmp_path,
        timeout=WITH_RAY,
        shared_ray=True,
    )
    assert re.search(r"review --run mixed --limit 10: [0-1] of the top 10 hold the star \(1 of the night's 3 do\)", out)
    rows = table(out, ["run", "baseline runs", "drift status", "measures moved"])
    assert [(row["run"], row["baseline runs"]) for row in rows] == [("ordinary-2", "1"), ("novel", "2")]
    assert all(row["drift status"] in ("0", "6") for row in rows)
