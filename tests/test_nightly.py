"""Nightly-run guarantees: hostile input, crashes of the driver and of replicas, incremental runs, security."""

import io
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import pyarrow.dataset as pads
import pytest
from conftest import bomb_png, jpeg_with_orientation, png_bytes
from delta_read import delta_sql, delta_table
from PIL import Image
from test_segment_job import ROOT, read_dataset, run_job

from unet_core import (
    decode_image,
    decode_mask_png,
    letterbox,
    load_artifact,
    unletterbox,
)
from unet_core.predict import Predictor

pytestmark = pytest.mark.ray

RNG = np.random.default_rng(11)


def _random_png(height: int, width: int) -> bytes:
    return png_bytes(Image.fromarray(RNG.integers(0, 255, (height, width, 3), dtype=np.uint8)))


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def hostile_corpus(folder) -> dict[str, str | None]:
    """name -> expected error fragment (None for files that must segment fine)."""
    folder.mkdir()
    palette = Image.fromarray(RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert("P")
    gif_frames = [Image.new("RGB", (16, 12), c) for c in ((250, 0, 0), (0, 0, 250))]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:])
    cases = {
        "zero.png": (b"", "empty file"),
        "truncated.png": (_random_png(40, 40)[:100], "truncated"),
        "truncated.jpg": (
            _encoded(Image.fromarray(RNG.integers(0, 255, (40, 40, 3), dtype=np.uint8)), "JPEG")[:300],
            "truncated",
        ),
        "text.jpg": (b"this is a text file wearing a .jpg name\n", "not a recognised image"),
        "bomb.png": (bomb_png(200_000, 200_000), "above the max_pixels limit of 50,000,000"),
        "one.png": (_random_png(1, 1), None),
        "wide.png": (_random_png(3, 4000), None),
        "grey16.png": (png_bytes(Image.fromarray(RNG.integers(0, 65535, (17, 23), dtype=np.uint16))), None),
        "cmyk.jpg": (_encoded(Image.new("CMYK", (24, 16), (10, 200, 30, 0)), "JPEG"), None),
        "palette_alpha.png": (png_bytes(palette, transparency=3), None),
        "animated.gif": (gif.getvalue(), None),
        "rotated.jpg": (jpeg_with_orientation(RNG.integers(0, 255, (20, 50, 3), dtype=np.uint8), 8), None),
        "with space.png": (_random_png(12, 9), None),
        "ünïcødé 名前.png": (_random_png(9, 12), None),
        "hash#1.png": (_random_png(10, 10), None),
        "what?.png": (_random_png(11, 10), None),
        "percent%20done.png": (_random_png(10, 11), None),
    }
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    os.symlink(folder, folder / "loop")  # a folder that contains itself
    os.symlink("self.png", folder / "self.png")  # a link to itself
    expected = {name: reason for name, (_, reason) in cases.items()}
    expected["self.png"] = "cannot read file"
    return expected


def test_hostile_input_gives_exactly_one_correct_row_per_file(tmp_path, tiny_artifact):
    expected = hostile_corpus(tmp_path / "hostile")
    output = str(tmp_path / "out")
    done = run_job(
        "segment.py",
        "--input",
        str(tmp_path / "hostile"),
        "--output",
        output,
        "--model",
        tiny_artifact,
        "--precision",
        "float32",
        "--max-pixels",
        "50000000",
        "--run-id",
        "hostile",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_dataset(output, "images").to_pylist()
    names = sorted(os.path.basename(r["image_uri"]) for r in rows)
    assert names == sorted(expected)  # one row per file; the looping folder is not descended
    predictor = Predictor(load_artifact(tiny_artifact), batch_size=4, precision="float32")
    stats = read_dataset(output, "class_stats").to_pylist()
    for row in rows:
        name = os.path.basename(row["image_uri"])
        if expected[name] is not None:
            assert row["status"] == "error" and expected[name] in row["error"], (name, row["error"])
            continue
        assert row["status"] == "ok", (name, row["error"])
        image = decode_image(open(row["image_uri"], "rb").read())
        boxed, box = letterbox(image, 32)
        mask = predictor.predict(boxed[None]).masks
        truth = unletterbox(mask[0], box)
        np.testing.assert_array_equal(decode_mask_png(row["mask_png"]), truth, err_msg=name)
        counts = {s["class_id"]: s["pixels"] for s in stats if s["image_id"] == row["image_id"]}
        assert counts == {c: int((truth == c).sum()) for c in range(3)}, name
    assert (row := next(r for r in rows if r["image_uri"].endswith("wide.png")))["width"] == 4000


def _images(tmp_path, count: int, start: int = 0, size: int = 48):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for index in range(start, start + count):
        (folder / f"img_{index:03d}.png").write_bytes(_random_png(size, size + index % 7))
    return folder


def _committed_rows(output: str) -> list[dict]:
    return delta_sql(output, "SELECT image_uri, source_size, source_version, status FROM images").to_pylist()


def test_incremental_run_processes_only_new_and_changed_images(tmp_path, tiny_artifact):
    folder = _images(tmp_path, 20)
    (folder / "broken.png").write_bytes(b"broken")
    output = str(tmp_path / "out")
    args = ["--input", str(folder), "--output", output, "--model", tiny_artifact, "--incremental"]
    first = run_job("segment.py", *args, "--run-id", "night-1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "21 images, 0 skipped, 21 processed: 20 ok, 1 errors" in first.stdout

    _images(tmp_path, 10, start=20)
    for name in ("img_003.png", "img_007.png"):
        (folder / name).write_bytes(_random_png(30, 31))
    second = run_job("segment.py", *args, "--run-id", "night-2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "31 images, 19 skipped, 12 processed: 12 ok, 0 errors" in second.stdout
    night2 = read_dataset(output, "images").filter(pads.field("run_id") == "night-2").column("image_uri").to_pylist()
    assert sorted(os.path.basename(u) for u in night2) == sorted(
        [f"img_{i:03d}.png" for i in range(20, 30)] + ["img_003.png", "img_007.png"]
    )

    _images(tmp_path, 1, start=30)
    third = run_job("segment.py", *args, "--run-id", "night-3", "--retry-errors", "--max-error-rate", "0.4")
    assert third.returncode == 3, third.stderr[-3000:]  # the retried image fails again: 1 of 2, above 0.4
    assert "32 images, 30 skipped, 2 processed: 1 ok, 1 errors" in third.stdout
    assert "above --max-error-rate 0.4" in third.stderr
    rows = _committed_rows(output)
    versions = [(r["image_uri"], r["source_size"], r["source_version"]) for r in rows if r["status"] == "ok"]
    assert len(versions) == len(set(versions)) == 33  # 20 + 10 + 1 new + 2 changed versions, each once
    assert sum(r["status"] == "error" for r in rows) == 2  # the broken file, in night-1 and (retried) night-3


def _start_job(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env_extra or {})
    return subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "segment.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for_parts(output: str, run_id: str, proc: subprocess.Popen, timeout: float = 240) -> int:
    folder = os.path.join(output, "images", f"run_id={run_id}")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        parts = [f for f in os.listdir(folder) if f.endswith(".parquet")] if os.path.isdir(folder) else []
        if parts:
            return len(parts)
        time.sleep(0.05)
    raise AssertionError(f"no part files appeared while the job ran:\n{proc.communicate()[0][-3000:]}")


def test_replica_killed_mid_run_is_restarted_and_every_image_is_written(tmp_path, slow_artifact):
    folder = _images(tmp_path, 24)
    output = str(tmp_path / "out")
    proc = _start_job(
        "--input",
        str(folder),
        "--output",
        output,
        "--model",
        slow_artifact,
        "--run-id",
        "actor",
        "--batch-size",
        "2",
        "--rows-per-file",
        "2",
        "--precision",
        "float32",
    )
    _wait_for_parts(output, "actor", proc)
    replicas = [
        p for p in psutil.Process(proc.pid).children(recursive=True) if "MapBatches(Segmenter)" in " ".join(p.cmdline())
    ]
    assert len(replicas) == 1
    replicas[0].kill()
    assert delta_table(output, "images").transaction_version("actor") is None  # killed before the run finished
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "24 images, 0 skipped, 24 processed: 24 ok, 0 errors" in out
    rows = _committed_rows(output)
    assert sorted(r["image_uri"] for r in rows) == sorted(str(p) for p in folder.iterdir())


def test_model_carrying_code_is_refused_with_one_line(tmp_path, mixed_folder):
    import keras

    from unet_core import save_artifact

    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    save_artifact(
        keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(hidden)), str(tmp_path / "evil"), ["a", "b"]
    )
    done = run_job(
        "segment.py",
        "--input",
        mixed_folder["grey.png"],
        "--output",
        str(tmp_path / "out"),
        "--model",
        str(tmp_path / "evil"),
        timeout=120,
    )
    assert done.returncode == 2 and "refused by Keras safe mode" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_input_names_never_become_output_paths(tmp_path, tiny_artifact):
    outside = tmp_path / "x.png"
    outside.write_bytes(_random_png(8, 8))
    lists = tmp_path / "a" / "b"
    lists.mkdir(parents=True)
    (lists / "list.txt").write_text("../../x.png\n")
    output = lists / "out"
    before = {p for p in tmp_path.rglob("*")}
    done = run_job(
        "segment.py",
        "--input",
        str(lists / "list.txt"),
        "--output",
        str(output),
        "--model",
        tiny_artifact,
        "--run-id",
        "trav",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == output or output in p.parents for p in created)
    names = {p.name for p in created if p.is_file()}
    ours = r"part-[0-9a-f]{32}\.parquet"  # a worker's part
    deltas = r"part-\d{5}-[0-9a-f-]{36}-c000\.(zstd|snappy)\.parquet|\d{20}\.json|\d{20}\.checkpoint\.parquet|_last_checkpoint"
    assert all(re.fullmatch(f"{ours}|{deltas}", n) for n in names), names
    assert read_dataset(str(output), "images").column("status").to_pylist() == ["ok"]


def test_credentials_never_reach_outputs_or_logs(tmp_path, tiny_artifact, mixed_folder):
    secrets = {"AWS_ACCESS_KEY_ID": "AKIALEAKCHECK7Q2XZ", "AWS_SECRET_ACCESS_KEY": "leak/Check+Secret9876543210abcdef"}
    ray_tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")
    output = tmp_path / "out"
    proc = _start_job(
        "--input",
        os.path.dirname(mixed_folder["grey.png"]),
        "--output",
        str(output),
        "--model",
        tiny_artifact,
        env_extra={**secrets, "RAY_TMPDIR": ray_tmp},
    )
    logs, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, logs[-3000:]
    scanned = 0
    for root in (output, ray_tmp):
        for path in (p for p in __import__("pathlib").Path(root).rglob("*") if p.is_file() and not p.is_socket()):
            data = path.read_bytes()
            scanned += 1
            for value in secrets.values():
                assert value.encode() not in data, f"{value} leaked into {path}"
    for value in secrets.values():
        assert value not in logs
    assert scanned > 10


def test_an_image_deleted_from_the_folder_leaves_current_and_the_summary_and_comes_back_when_restored(
    tmp_path, tiny_artifact
):
    """Issue 27.9: `current` never forgot an image deleted from the collection, so the summary counted it
    and every plan read it. A run that lists a folder whole marks what it did not find (deleted_at),
    in the same update of `current`; a later listing that finds the file again clears the mark."""
    from test_query import query_json

    from jobs.output.readers import connect

    folder = _images(tmp_path, 4)
    output = str(tmp_path / "out")
    args = ["--input", str(folder), "--output", output, "--model", tiny_artifact, "--incremental"]

    def night(run_id: str) -> tuple[int, int, set[str]]:
        done = run_job("segment.py", *args, "--run-id", run_id)
        assert done.returncode == 0, done.stderr[-3000:]
        pixels = sum(row["pixels"] for row in query_json(output, "summary"))
        present = connect(output).sql("SELECT image_uri FROM current_images").fetchall()
        marked = delta_sql(output, "SELECT count(*) AS n FROM current WHERE deleted_at IS NOT NULL").column("n")[0]
        return pixels, marked.as_py(), {os.path.basename(uri) for (uri,) in present}

    sizes = {f"img_{i:03d}.png": 48 * (48 + i % 7) for i in range(4)}
    assert night("full") == (sum(sizes.values()), 0, set(sizes))
    kept = (folder / "img_002.png").read_bytes()
    (folder / "img_002.png").unlink()
    assert night("after-delete") == (sum(sizes.values()) - sizes["img_002.png"], 1, set(sizes) - {"img_002.png"})
    (folder / "img_002.png").write_bytes(kept)
    assert night("restored") == (sum(sizes.values()), 0, set(sizes))
    rows = delta_sql(output, "SELECT count(*) AS n, count(DISTINCT image_uri) AS d FROM current").to_pylist()
    assert rows == [{"n": 4, "d": 4}]


def test_a_run_in_which_every_processed_image_failed_exits_4_and_says_what_a_list_file_was_read_as(
    tmp_path, tiny_artifact
):
    """Issue 30: `--input notes.txt` read a text file as a list, found one "image", committed a run with
    every image failed, and exited 0, as if all was well."""
    notes = tmp_path / "notes.txt"
    notes.write_text("remember to segment the holiday photos\n")
    done = run_job("segment.py", "--input", str(notes), "--output", str(tmp_path / "out"), "--model", tiny_artifact)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "1 images, 0 skipped, 1 processed: 0 ok, 1 errors" in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith((str(notes), "error:"))]
    assert (
        lines[0] == f"{notes}: read as a list file, one image URI a line; none of its first 1 entries names "
        "an image file (.jpg, .png, ...)"
    )
    assert lines[1].startswith("error: every one of the 1 processed images failed; `python jobs/query.py --output ")
    assert "Traceback" not in done.stderr
