"""The Delta tables' guarantees under crashes, strays and concurrency, read back with deltalake itself."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import png_bytes
from delta_read import delta_sql, delta_table, s3_options, snapshot
from PIL import Image
from test_segment_job import ROOT, run_job

from jobs.output import leases

pytestmark = pytest.mark.ray

RNG = np.random.default_rng(23)


def make_images(folder, count: int, start: int = 0, size: tuple[int, int] = (24, 30)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = folder / f"img_{index:03d}.png"
        path.write_bytes(png_bytes(Image.fromarray(RNG.integers(0, 255, (*size, 3), dtype=np.uint8))))
        paths.append(str(path))
    return paths


def start_job(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = env or {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "segment.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240, poll: float = 0.05) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"{what} never happened while the job ran:\n{proc.communicate()[0][-3000:]}")


def parts_on_disk(output: str, table: str, run_id: str) -> list[str]:
    return sorted(glob.glob(os.path.join(output, table, f"run_id={run_id}", "*.parquet")))


def run_rows(output: str, run_id: str) -> list[dict]:
    return delta_sql(output, f"SELECT image_id, image_uri FROM images WHERE run_id = '{run_id}'").to_pylist()


def backdate(output: str, hours: float) -> None:
    """Age every data file, as a night's worth of time would."""
    past = time.time() - hours * 3600
    for path in glob.glob(os.path.join(output, "*", "**", "*.parquet"), recursive=True):
        os.utime(path, (past, past))


def maintain(output: str, *args: str) -> subprocess.CompletedProcess:
    done = run_job("maintain.py", "--output", output, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_driver_killed_halfway_resumes_keeping_its_parts_and_strays_stay_hidden(tmp_path, slow_artifact):
    output = str(tmp_path / "out")
    base = make_images(tmp_path / "base", 4)
    done = run_job(
        "segment.py",
        "--input",
        str(tmp_path / "base"),
        "--output",
        output,
        "--model",
        slow_artifact,
        "--run-id",
        "base",
        "--precision",
        "float32",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    before = snapshot(output)

    crash = make_images(tmp_path / "crash", 24)
    args = [
        "--input",
        str(tmp_path / "crash"),
        "--output",
        output,
        "--model",
        slow_artifact,
        "--run-id",
        "crash",
        "--batch-size",
        "2",
        "--rows-per-file",
        "2",
        "--precision",
        "float32",
        "--progress-every",
        "1",
    ]
    proc = start_job(*args)
    wait_for(lambda: len(parts_on_disk(output, "images", "crash")) >= 6, proc, "half of the 12 parts")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    kept = parts_on_disk(output, "images", "crash")
    assert 6 <= len(kept) < 12  # it died mid-run, with about half its parts written
    assert snapshot(output) == before
    live = run_job("query.py", "--output", output, "--format", "json", "live")
    assert live.returncode == 0, live.stderr[-3000:]
    [attempt] = json.loads(live.stdout)
    assert (attempt["run_id"], attempt["planned"], attempt["state"]) == ("crash", 24, "running")  # not expired yet

    for table in ("images", "class_stats"):  # strays: a committed part copied beside itself and into a new run
        part = parts_on_disk(output, table, "base")[0]
        shutil.copy(part, part.replace(".parquet", "-copy.parquet"))
        os.makedirs(os.path.join(output, table, "run_id=stray"))
        shutil.copy(part, os.path.join(output, table, "run_id=stray", "part-stray.parquet"))
    assert snapshot(output) == before

    lease = os.path.join(output, "_leases", "crash.json")
    expired = time.time() - 2 * leases.EXPIRY_SECONDS  # the store's time passes: the dead attempt's lease expires
    os.utime(lease, (expired, expired))
    again = run_job("segment.py", *args)  # the dead attempt's id runs again: it resumes
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # a write in flight at the kill may still land: the attempt counts what it finds when it starts
    found = re.search(r"resuming: (\d+) parts of an earlier attempt hold (\d+) of the 24 planned images", again.stdout)
    assert found and int(found[1]) >= len(kept) and int(found[2]) == 2 * int(found[1]), again.stdout[-3000:]
    resumed = int(found[2])
    if resumed < 24:  # writes in flight at the kill can land every part; then there is nothing to show progress on
        assert re.search(
            r"run crash: \d+/24 images \(\d+\.\d%\), [\d.]+ images/s, ETA \S+, 0 errors so far", again.stdout
        ), again.stdout[-3000:]
    rows = run_rows(output, "crash")
    assert sorted(r["image_uri"] for r in rows) == sorted(crash) and len({r["image_id"] for r in rows}) == 24
    assert sorted(r["image_uri"] for r in run_rows(output, "base")) == sorted(base)
    assert delta_sql(output, "SELECT resumed FROM runs WHERE run_id = 'crash'").to_pylist() == [{"resumed": resumed}]
    committed = {uri.rsplit("/", 1)[-1] for uri in delta_table(output, "images").file_uris()}
    assert {path.rsplit("/", 1)[-1] for path in kept} <= committed  # the first attempt's parts, committed as written
    assert not os.path.exists(os.path.join(output, "_plans", "crash"))

    content = {table: rows for table, (_, rows) in snapshot(output).items()}
    referenced = {table: set(delta_table(output, table).file_uris()) for table in ("images", "class_stats")}
    backdate(output, hours=3)
    report = maintain(output, "--retention-hours", "1")
    assert "vacuumed" in report.stdout
    assert {table: rows for table, (_, rows) in snapshot(output).items()} == content
    for table in ("images", "class_stats"):
        # left: the files of the compacted version and of the one before it (readers may still be on it,
        # for the retention); gone: the dead attempt's files and the strays
        kept = referenced[table] | set(delta_table(output, table).file_uris())
        assert set(glob.glob(os.path.join(output, table, "run_id=*", "*.parquet"))) == kept
    assert not os.listdir(os.path.join(output, "images", "run_id=stray"))


def test_a_kill_during_the_commit_leaves_readable_tables_that_the_next_run_completes(tmp_path, tiny_artifact):
    output = str(tmp_path / "out")
    make_images(tmp_path / "in", 6)
    proc = start_job(
        "--input",
        str(tmp_path / "in"),
        "--output",
        output,
        "--model",
        tiny_artifact,
        "--run-id",
        "cut",
        "--batch-size",
        "2",
        "--rows-per-file",
        "2",
    )
    images_commit = os.path.join(output, "images", "_delta_log", f"{1:020d}.json")
    wait_for(lambda: os.path.exists(images_commit), proc, "the images commit", poll=0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    committed = {r["run_id"] for r in delta_sql(output, "SELECT DISTINCT run_id FROM images").to_pylist()}
    assert committed == {"cut"}
    for table in ("class_stats", "current", "runs"):  # readable, and never ahead of images
        follower = {r["run_id"] for r in delta_sql(output, f"SELECT DISTINCT run_id FROM {table}").to_pylist()}
        assert follower <= committed, table

    report = maintain(output)
    for table, count in (("images", 6), ("class_stats", 18), ("current", 6), ("runs", 1)):
        assert (
            delta_sql(output, f"SELECT count(*) AS n FROM {table} WHERE run_id = 'cut'").column("n")[0].as_py() == count
        )
    print("completed after the kill:", [line for line in report.stdout.splitlines() if "completed" in line])


def test_concurrent_runs_into_one_root_commit_every_image_exactly_once(tmp_path, tiny_artifact):
    output = str(tmp_path / "out")
    shared = make_images(tmp_path / "shared", 6)
    own = {name: make_images(tmp_path / name, 3, start=100) for name in ("left", "right")}
    procs = {
        name: start_job(
            "--input",
            str(tmp_path / "shared"),
            str(tmp_path / name),
            "--output",
            output,
            "--model",
            tiny_artifact,
            "--run-id",
            name,
            "--batch-size",
            "2",
            "--rows-per-file",
            "2",
            "--actors",
            "1",
            "--cpus-per-actor",
            "0.5",
        )
        for name in own
    }
    for proc in procs.values():
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-3000:]
    for name in own:
        rows = run_rows(output, name)
        assert sorted(r["image_uri"] for r in rows) == sorted(shared + own[name])
        assert len({r["image_id"] for r in rows}) == len(rows) == 9
        stats = delta_sql(output, f"SELECT count(*) AS n FROM class_stats WHERE run_id = '{name}'")
        assert stats.column("n")[0].as_py() == 9 * 3
    current = delta_sql(output, "SELECT image_uri, run_id FROM current").to_pylist()
    assert sorted(r["image_uri"] for r in current) == sorted(shared + own["left"] + own["right"])
    assert sorted(r["run_id"] for r in delta_sql(output, "SELECT run_id FROM runs").to_pylist()) == ["left", "right"]


def test_a_live_run_id_is_refused_with_one_line(tmp_path, slow_artifact):
    output = str(tmp_path / "out")
    make_images(tmp_path / "in", 12)
    args = [
        "--input",
        str(tmp_path / "in"),
        "--output",
        output,
        "--model",
        slow_artifact,
        "--run-id",
        "busy",
        "--batch-size",
        "2",
        "--precision",
        "float32",
    ]
    first = start_job(*args)
    wait_for(lambda: os.path.exists(os.path.join(output, "_leases", "busy.json")), first, "the lease")
    second = run_job("segment.py", *args)
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run busy is already in progress" in errors[0] and f"pid {first.pid}" in errors[0]
    out, _ = first.communicate(timeout=400)
    assert first.returncode == 0, out[-3000:]
    assert len(run_rows(output, "busy")) == 12
    assert not os.path.exists(os.path.join(output, "_leases", "busy.json"))  # released after commit


def write_version(path, content_seed: int, modified: float) -> None:
    rng = np.random.default_rng(content_seed)
    path.write_bytes(png_bytes(Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))))
    os.utime(path, (modified, modified))


def test_current_follows_the_version_a_file_has_now_even_an_older_one(tmp_path, tiny_artifact):
    """A file restored from a backup has an older mtime than the version it replaces: `current` follows
    it once, and the next night skips it (issue case 7: it was processed every night for ever)."""
    import ray

    from jobs.inference.config import SegmentConfig
    from jobs.inference.run import segment

    output = str(tmp_path / "out")
    folder = tmp_path / "in"
    folder.mkdir()
    now = time.time()
    environment = dict(os.environ)

    def run(run_id: str) -> tuple[int, int, int]:
        record = segment(
            SegmentConfig(
                inputs=[str(folder)],
                output=output,
                model=tiny_artifact,
                actors="1",
                cpus_per_actor=1.0,
                incremental=True,
                run_id=run_id,
            )
        )
        return record.inputs, record.skipped, record.processed

    try:  # three nights on one in-process Ray
        write_version(folder / "a.png", 1, now)
        write_version(folder / "b.png", 2, now)
        assert run("night-1") == (2, 0, 2)
        write_version(folder / "a.png", 3, now - 86_400)  # yesterday's a.png, restored over today's
        assert run("night-2") == (2, 1, 1)
        assert run("night-3") == (2, 2, 0)
        current = {
            os.path.basename(r["image_uri"]): r["run_id"]
            for r in delta_sql(output, "SELECT image_uri, run_id FROM current").to_pylist()
        }
        assert current == {"a.png": "night-2", "b.png": "night-1"}
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environment)


def test_a_run_that_listed_earlier_and_commits_later_leaves_current_alone(tmp_path, tiny_artifact):
    """`current` follows the latest listing, not the latest commit: a late run holds an earlier version."""
    output = str(tmp_path / "out")
    folder = tmp_path / "in"
    make_images(folder, 5)
    write_version(folder / "a.png", 1, time.time() - 86_400)
    late = start_job("--input", str(folder), "--output", output, "--model", tiny_artifact, "--run-id", "late")
    wait_for(lambda: os.path.exists(os.path.join(output, "_leases", "late.json")), late, "the late run's lease")
    late.send_signal(signal.SIGSTOP)  # listed, and now slow: it commits after the night's run
    try:
        write_version(folder / "a.png", 2, time.time())
        nightly = run_job(
            "segment.py",
            "--input",
            str(folder / "a.png"),
            "--output",
            output,
            "--model",
            tiny_artifact,
            "--run-id",
            "nightly",
        )
        assert nightly.returncode == 0, nightly.stderr[-3000:]
    finally:
        late.send_signal(signal.SIGCONT)
    out, _ = late.communicate(timeout=300)
    assert late.returncode == 0, out[-3000:]
    committed = [r["run_id"] for r in delta_sql(output, "SELECT run_id FROM runs ORDER BY commit_version").to_pylist()]
    assert committed == ["nightly", "late"]
    current = delta_sql(output, "SELECT run_id FROM current WHERE image_uri LIKE '%/a.png'").to_pylist()
    assert current == [{"run_id": "nightly"}]


def test_s3_root_with_runs_takes_concurrent_runs_and_hides_strays(s3_server, s3_bucket, tiny_artifact, tmp_path):
    fs = s3_server.filesystem()
    for name, count, start in (("first", 3, 0), ("left", 3, 10), ("right", 3, 20)):
        for path in make_images(tmp_path / name, count, start=start):
            fs.put_file(path, f"{s3_bucket}/photos/{name}/{os.path.basename(path)}")
    output = f"s3://{s3_bucket}/seg"
    env = s3_server.env()
    common = ["--output", output, "--model", tiny_artifact, "--batch-size", "2", "--rows-per-file", "2"]
    first = run_job("segment.py", "--input", f"s3://{s3_bucket}/photos/first/", *common, "--run-id", "first", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    procs = [
        start_job(
            "--input",
            f"s3://{s3_bucket}/photos/{name}/",
            f"s3://{s3_bucket}/photos/first/",
            *common,
            "--run-id",
            name,
            "--actors",
            "1",
            "--cpus-per-actor",
            "0.5",
            env=env,
        )
        for name in ("left", "right")
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-3000:]

    options = s3_options(env)
    before = snapshot(output, options)
    part = next(p for p in fs.find(f"{s3_bucket}/seg/images/run_id=first") if p.endswith(".parquet"))
    fs.copy(part, f"{s3_bucket}/seg/images/run_id=first/part-stray.parquet")
    fs.copy(part, f"{s3_bucket}/seg/images/run_id=ghost/part-stray.parquet")
    assert snapshot(output, options) == before

    counts = delta_sql(
        output,
        "SELECT run_id, count(*) AS n, count(DISTINCT image_id) AS d FROM images GROUP BY run_id ORDER BY run_id",
        options,
    ).to_pylist()
    assert counts == [
        {"run_id": "first", "n": 3, "d": 3},
        {"run_id": "left", "n": 6, "d": 6},
        {"run_id": "right", "n": 6, "d": 6},
    ]
    assert delta_sql(output, "SELECT count(*) AS n FROM current", options).column("n")[0].as_py() == 9
    assert delta_sql(output, "SELECT count(*) AS n FROM runs", options).column("n")[0].as_py() == 3


def test_s3_run_killed_halfway_resumes_with_the_same_run_id(s3_server, s3_bucket, slow_artifact, tmp_path):
    fs = s3_server.filesystem()
    for path in make_images(tmp_path / "photos", 32):
        fs.put_file(path, f"{s3_bucket}/resume/{os.path.basename(path)}")
    output, env = f"s3://{s3_bucket}/resumed", s3_server.env()
    args = [
        "--input",
        f"s3://{s3_bucket}/resume/",
        "--output",
        output,
        "--model",
        slow_artifact,
        "--run-id",
        "night",
        "--batch-size",
        "2",
        "--rows-per-file",
        "2",
        "--precision",
        "float32",
    ]
    proc = start_job(*args, env=env)
    folder = f"{s3_bucket}/resumed/images/run_id=night"

    def written() -> list[str]:
        return [p for p in fs.find(folder) if p.endswith(".parquet")] if fs.exists(folder) else []

    # 16 parts, killed after the first 4: parts land several at a time, so the margin keeps the kill mid-run
    wait_for(lambda: len(written()) >= 4, proc, "a quarter of the 16 parts", poll=0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = written()
    assert 4 <= len(kept) < 16
    # the lease's expiry by the store's clock is tested in test_leases; here the dead attempt's lease goes as
    # its expiry would take it
    fs.rm(f"{s3_bucket}/resumed/_leases/night.json")
    again = run_job("segment.py", *args, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # a write in flight at the kill may still land: the attempt counts what it finds when it starts
    found = re.search(r"resuming: (\d+) parts of an earlier attempt hold (\d+) of the 32 planned images", again.stdout)
    assert found and int(found[1]) >= len(kept) and int(found[2]) == 2 * int(found[1]), again.stdout[-3000:]
    options = s3_options(env)
    counts = delta_sql(output, "SELECT count(*) AS n, count(DISTINCT image_uri) AS d FROM images", options)
    assert counts.to_pylist() == [{"n": 32, "d": 32}]
    assert delta_sql(output, "SELECT resumed FROM runs", options).to_pylist() == [{"resumed": int(found[2])}]
    committed = {uri.rsplit("/", 1)[-1] for uri in delta_table(output, "images", options).file_uris()}
    assert {path.rsplit("/", 1)[-1] for path in kept} <= committed
