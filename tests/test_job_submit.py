"""`ray job submit` for real: a head of our own (loopback, own temp dir and ports, token auth), the
segment job shipped with `--working-dir .` (the project is not installed on the cluster: the
job's scripts put the working directory on sys.path and Ray puts it on every worker's path)."""
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_segment_job import ROOT, read_dataset

HEAD_PORTS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port",
              "--ray-client-server-port")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


@pytest.fixture()
def ray_head():
    """A Ray head of our own, stopped by killing its own process group (never `ray stop`, which
    stops every Ray on the machine). Yields (dashboard address, client environment)."""
    root = tempfile.mkdtemp(prefix="ray-js-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ports = dict(zip(HEAD_PORTS, free_ports(len(HEAD_PORTS))))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_TMPDIR=root,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    command = [ray_cli(), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--temp-dir={root}/ray", "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=true",
               "--min-worker-port=0", "--max-worker-port=0", *(f"{flag}={port}" for flag, port in ports.items())]
    log = open(os.path.join(root, "head.log"), "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        wait_for_dashboard(address, env, head, root)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # what a graceful stop left behind (it takes half a minute)
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_for_dashboard(address: str, env: dict, head: subprocess.Popen, root: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if head.poll() is not None:
            pytest.fail(f"ray start exited {head.returncode}: {open(os.path.join(root, 'head.log')).read()[-3000:]}")
        done = subprocess.run([ray_cli(), "job", "list", "--address", address], env=env, capture_output=True,
                              text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"Ray head not ready after {timeout} s: {done.stderr[-2000:]}")
        time.sleep(2)


def test_ray_job_submit_runs_segment_on_our_head(ray_head, tmp_path, tiny_artifact, mixed_folder):
    address, env = ray_head
    output = str(tmp_path / "out")
    job_id = f"segment-{secrets.token_hex(4)}"
    submit = [ray_cli(), "job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", ".",
              "--", "python", "jobs/segment.py", "--input", os.path.dirname(mixed_folder["grey.png"]),
              "--output", output, "--model", tiny_artifact, "--run-id", "submitted", "--batch-size", "4"]
    done = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert f"Job '{job_id}' succeeded" in done.stdout + done.stderr

    status = subprocess.run([ray_cli(), "job", "status", "--address", address, job_id], env=env,
                            capture_output=True, text=True)
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr  # status SUCCEEDED
    logs = subprocess.run([ray_cli(), "job", "logs", "--address", address, job_id], env=env,
                          capture_output=True, text=True).stdout
    assert "run submitted: 7 images, 0 skipped, 7 processed: 6 ok, 1 errors" in logs
    run = read_dataset(output, "runs").to_pylist()
    assert [(r["run_id"], r["inputs"], r["skipped"], r["processed"], r["ok"], r["errors"]) for r in run] == [
        ("submitted", 7, 0, 7, 6, 1)]
    assert read_dataset(output, "images").num_rows == 7

    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
    refused = subprocess.run([ray_cli(), "job", "list", "--address", address], env=no_token, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0  # token auth is on: a client without the token is turned away
