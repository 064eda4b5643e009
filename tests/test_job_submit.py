"""`ray job submit` for real: a head of our own (loopback, own temp dir and ports, token auth), the
segment job shipped with `--working-dir .` (the project need not be installed on the cluster: Ray
puts the working directory first on the job's and every worker's PYTHONPATH)."""

import os
import secrets
import subprocess
import time

import pytest
from ray_head import ray_cli, start_head
from test_segment_job import ROOT, read_dataset

pytestmark = pytest.mark.ray


@pytest.fixture()
def ray_head():
    """A Ray head of our own with its dashboard (the job API). Yields (dashboard address, client environment)."""
    head = start_head(dashboard=True)
    try:
        wait_for_dashboard(head.dashboard, head.env, head.process)
        yield head.dashboard, head.env
    finally:
        head.stop()


def wait_for_dashboard(address: str, env: dict, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if head.poll() is not None:
            pytest.fail(f"ray start exited {head.returncode}")
        done = subprocess.run([ray_cli(), "job", "list", "--address", address], env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"Ray head not ready after {timeout} s: {done.stderr[-2000:]}")
        time.sleep(2)


def test_ray_job_submit_runs_segment_on_our_head(ray_head, tmp_path, tiny_artifact, mixed_folder):
    address, env = ray_head
    output = str(tmp_path / "out")
    job_id = f"segment-{secrets.token_hex(4)}"
    submit = [
        ray_cli(),
        "job",
        "submit",
        "--address",
        address,
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/segment.py",
        "--input",
        os.path.dirname(mixed_folder["grey.png"]),
        "--output",
        output,
        "--model",
        tiny_artifact,
        "--run-id",
        "submitted",
        "--batch-size",
        "4",
    ]
    done = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert f"Job '{job_id}' succeeded" in done.stdout + done.stderr

    status = subprocess.run(
        [ray_cli(), "job", "status", "--address", address, job_id], env=env, capture_output=True, text=True
    )
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr  # status SUCCEEDED
    logs = subprocess.run(
        [ray_cli(), "job", "logs", "--address", address, job_id], env=env, capture_output=True, text=True
    ).stdout
    assert "run submitted: 7 images, 0 skipped, 7 processed: 6 ok, 1 errors" in logs
    run = read_dataset(output, "runs").to_pylist()
    assert [(r["run_id"], r["inputs"], r["skipped"], r["processed"], r["ok"], r["errors"]) for r in run] == [
        ("submitted", 7, 0, 7, 6, 1)
    ]
    assert read_dataset(output, "images").num_rows == 7

    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
    refused = subprocess.run(
        [ray_cli(), "job", "list", "--address", address], env=no_token, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0  # token auth is on: a client without the token is turned away

    where = [
        ray_cli(),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ".",
        "--",
        "python",
        "-c",
        "import jobs.segment; print('from', jobs.segment.__file__)",
    ]
    found = subprocess.run(where, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    shipped = [line for line in found.stdout.splitlines() if line.startswith("from ")]
    assert shipped and "working_dir_files" in shipped[0], found.stdout[-2000:]  # the uploaded copy, not an install
