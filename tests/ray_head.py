"""Ray heads of the tests' own: loopback, own temp dir and ports, token auth, stopped by killing their
own process group (never `ray stop`, which stops every Ray on the machine).

`shared_head()` is the one head the job tests share within a session: a job that only needs "a Ray
cluster" connects to it (as jobs on a long-lived cluster do) instead of starting a local Ray of its
own, which is most of a small job's wall time. Tests whose subject is the local start, the process
tree or the environment a worker inherits run their own.
"""

from __future__ import annotations

import atexit
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
from dataclasses import dataclass
from pathlib import Path

HEAD_PORTS = (
    "--port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
    "--ray-client-server-port",
)
READY_LINE = "Ray runtime started"


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


@dataclass
class RayHead:
    process: subprocess.Popen
    root: str
    ports: dict[str, int]
    env: dict[str, str]
    """What a client needs to reach the head: the environment with its token."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['--port']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    def client_env(self) -> dict[str, str]:
        return {**self.env, "RAY_ADDRESS": self.address}

    def log(self) -> str:
        with open(os.path.join(self.root, "head.log")) as handle:
            return handle.read()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # what a graceful stop left behind (it takes half a minute)
            os.killpg(self.process.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def start_head(num_cpus: int = 2, dashboard: bool = False, timeout: float = 120) -> RayHead:
    """Start a head and wait until `ray start` says it runs (the dashboard, if any, may lag behind)."""
    root = tempfile.mkdtemp(prefix="ray-t-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ports = dict(zip(HEAD_PORTS, free_ports(len(HEAD_PORTS))))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_TMPDIR=root,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    command = [
        ray_cli(),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={root}/ray",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        f"--include-dashboard={str(dashboard).lower()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    with open(os.path.join(root, "head.log"), "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(process, root, ports, env)
    deadline = time.monotonic() + timeout
    while READY_LINE not in head.log():
        if process.poll() is not None or time.monotonic() > deadline:
            head.stop()
            raise RuntimeError(f"ray start did not come up (exit {process.poll()}): {head.log()[-3000:]}")
        time.sleep(0.2)
    return head


_shared: list[RayHead] = []


def shared_head() -> RayHead:
    """The session's shared head, started on first use and stopped when the session's process exits."""
    if not _shared:
        _shared.append(start_head())
        atexit.register(_shared[0].stop)
    return _shared[0]
