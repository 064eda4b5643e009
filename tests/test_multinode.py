"""Placement on a real multi-node Ray cluster (ray.cluster_utils.Cluster: one head, worker nodes as
separate raylets on this machine), with fake GPUs declared by worker nodes.

Every replica logs where it was placed (node, assigned GPUs, CUDA_VISIBLE_DEVICES, the device
TensorFlow uses) and the run's row in the `runs` table lists the replicas that did the work; the tests
assert on both.
"""

import json
import os
import shutil
import socket
import tempfile

import pytest
from ray.cluster_utils import Cluster
from test_segment_job import read_dataset, run_job

pytestmark = pytest.mark.ray

PLACED = "model replica placed: "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def make_cluster(monkeypatch):
    """Start a head (1 CPU, no GPU) and the given worker nodes; returns (cluster, worker node ids)."""
    root = tempfile.mkdtemp(prefix="ray-mn-", dir="/tmp")  # short: Ray's socket paths have a length limit
    monkeypatch.setenv("RAY_TMPDIR", root)  # keeps this cluster's address file away from other Rays
    temp_dir = os.path.join(root, "ray")
    os.makedirs(temp_dir)
    clusters = []

    def start(*workers: dict) -> tuple[Cluster, list[str]]:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "gcs_server_port": free_port(),
                "include_dashboard": False,
                "temp_dir": temp_dir,
            },
        )
        clusters.append(cluster)
        nodes = [cluster.add_node(**spec) for spec in workers]
        cluster.wait_for_nodes()
        return cluster, [node.node_id for node in nodes]

    yield start
    for cluster in clusters:
        cluster.shutdown()
    shutil.rmtree(root, ignore_errors=True)


def segment_on(cluster: Cluster, folder: str, output: str, model: str, *flags: str):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_DEDUP_LOGS="0",  # every replica's placement line, even when two read alike
        RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="300",
    )  # the whole pool starts before any batch runs
    done = run_job(
        "segment.py",
        "--input",
        folder,
        "--output",
        output,
        "--model",
        model,
        "--address",
        cluster.address,
        "--batch-size",
        "1",
        "--run-id",
        "placed",
        *flags,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    placed = [
        json.loads(line.split(PLACED, 1)[1]) for line in (done.stdout + done.stderr).splitlines() if PLACED in line
    ]
    (run,) = read_dataset(output, "runs").to_pylist()
    assert run["errors"] == 1  # corrupt.png
    for replica in json.loads(run["replicas"]):
        assert replica in placed
    return placed, run


def test_cpu_replicas_spread_over_two_worker_nodes(make_cluster, tmp_path, tiny_artifact, mixed_folder):
    cluster, workers = make_cluster({"num_cpus": 2}, {"num_cpus": 2})
    placed, _ = segment_on(
        cluster,
        os.path.dirname(mixed_folder["grey.png"]),
        str(tmp_path / "out"),
        tiny_artifact,
        "--actors",
        "2",
        "--cpus-per-actor",
        "1.5",
    )
    assert sorted(r["node_id"] for r in placed) == sorted(workers)  # 1.5 CPUs fit once per worker, never on the head
    assert all(r["gpu_ids"] == [] and r["tensorflow_device"] == "CPU" for r in placed)


def test_one_replica_per_fake_gpu_and_only_on_gpu_nodes(make_cluster, tmp_path, tiny_artifact, mixed_folder):
    cluster, (two_gpus, one_gpu, no_gpu) = make_cluster(
        {"num_cpus": 2, "num_gpus": 2}, {"num_cpus": 2, "num_gpus": 1}, {"num_cpus": 2}
    )
    folder = os.path.dirname(mixed_folder["grey.png"])
    placed, run = segment_on(
        cluster,
        folder,
        str(tmp_path / "out"),
        tiny_artifact,
        "--gpus-per-actor",
        "1",
        "--actors",
        "3",
        "--cpus-per-actor",
        "0.5",
    )
    assert sorted((r["node_id"], r["gpu_ids"][0]) for r in placed) == sorted(
        [(two_gpus, "0"), (two_gpus, "1"), (one_gpu, "0")]
    )
    for replica in placed:
        assert replica["gpu_ids"] and len(replica["gpu_ids"]) == 1
        assert replica["cuda_visible_devices"] == replica["gpu_ids"][0]  # what Ray assigned is what TF is shown
        assert replica["tensorflow_device"] == "CPU"  # the GPUs are fake: TensorFlow falls back to the CPU
    assert json.loads(run["config"])["gpus_per_actor"] == 1

    too_many = run_job(
        "segment.py",
        "--input",
        folder,
        "--output",
        str(tmp_path / "out2"),
        "--model",
        tiny_artifact,
        "--address",
        cluster.address,
        "--gpus-per-actor",
        "1",
        "--actors",
        "4",
        "--wait-for-nodes",
        "0",
    )
    # a cluster this job did not start may autoscale: the request stands until the wait ends
    assert too_many.returncode == 2, too_many.stderr[-2000:]
    assert (
        "error: waited 0 s for 4 model replicas of 1 CPU + 1 GPU and the cluster never held them "
        "(now 4 nodes with 7 CPUs and 3 GPUs)" in too_many.stderr
    )


def test_half_gpu_replicas_share_one_gpu(make_cluster, tmp_path, tiny_artifact, mixed_folder):
    cluster, (gpu_node,) = make_cluster({"num_cpus": 2, "num_gpus": 1})
    placed, _ = segment_on(
        cluster,
        os.path.dirname(mixed_folder["grey.png"]),
        str(tmp_path / "out"),
        tiny_artifact,
        "--gpus-per-actor",
        "0.5",
        "--actors",
        "2",
        "--cpus-per-actor",
        "0.5",
    )
    assert len(placed) == 2 and len({r["pid"] for r in placed}) == 2
    assert all(r["node_id"] == gpu_node and r["gpu_ids"] == ["0"] for r in placed)
    assert all(r["cuda_visible_devices"] == "0" for r in placed)
