"""A Ray head with Ray's fake multi-node autoscaler: worker nodes of declared types (fake GPUs
included) are started as raylets on this machine when demand asks for them, exactly as a cloud
autoscaler would launch instances. The head is ours: own temp dir and ports, stopped by killing its
own process group (never `ray stop`, which stops every Ray on the machine)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

HEAD_PORTS = (
    "--port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
    "--ray-client-server-port",
)
EMPTY_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
    "cluster_synced_files",
    "rsync_exclude",
    "rsync_filter",
)


def autoscaling_config(gcs_address: str, worker_types: dict[str, dict]) -> dict:
    """A launcher config for the fake provider: the head type plus the given worker types."""
    config = {
        "cluster_name": "fake",
        "max_workers": 8,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            **worker_types,
        },
    }
    config.update({key: [] for key in EMPTY_KEYS})
    return config


@contextlib.contextmanager
def fake_autoscaling_cluster(worker_types: dict[str, dict], free_ports):
    """Yields (GCS address, environment for a job subprocess) of a head whose autoscaler adds the
    given worker types on demand."""
    import ray._private.services

    root = tempfile.mkdtemp(prefix="ray-as-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ports = dict(zip(HEAD_PORTS, free_ports(len(HEAD_PORTS))))
    address = f"{ray._private.services.get_node_ip_address()}:{ports['--port']}"
    config = Path(root) / "cluster.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(address, worker_types)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # token auth as on the shipped clusters; an explicit token, so no user file is read or written
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_TMPDIR=root,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--temp-dir={root}/ray",
        "--num-cpus=1",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--include-dashboard=false",
        f"--autoscaling-config={config}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    log = open(os.path.join(root, "head.log"), "w")
    head = subprocess.Popen(command, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_gcs(address, env, head, root)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        kill_processes_naming(root)  # the raylets the autoscaler started
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def kill_processes_naming(root: str) -> None:
    for process in psutil.process_iter(["cmdline"]):
        if any(root in part for part in process.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                process.kill()


def wait_for_gcs(address: str, env: dict, head: subprocess.Popen, root: str, timeout: float = 120) -> None:
    probe = [sys.executable, "-c", f"import ray; ray.init(address={address!r}); print(len(ray.nodes()))"]
    deadline = time.monotonic() + timeout
    while True:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited {head.returncode}: {Path(root, 'head.log').read_text()[-3000:]}")
        if subprocess.run(probe, env=env, capture_output=True, text=True).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray head not ready after {timeout} s")
        time.sleep(1)
