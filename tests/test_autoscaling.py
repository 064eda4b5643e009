"""Jobs on a cluster whose GPU workers autoscale from zero, as the shipped cluster configs start them:
Ray's fake multi-node autoscaler launches GPU worker nodes (raylets on this machine with fake GPUs)
only when demand asks for them."""

import json
import subprocess
import sys

import pytest
from fake_autoscaler import fake_autoscaling_cluster
from ray_head import free_ports
from test_multinode import PLACED
from test_segment_job import read_dataset, run_job
from test_train_job import TRAIN_ARGS, write_scenes

pytestmark = pytest.mark.ray

GPU_WORKERS = {"gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}}


@pytest.fixture(scope="module")
def gpu_cluster():
    with fake_autoscaling_cluster(GPU_WORKERS, free_ports) as cluster:
        yield cluster


def job_env(env: dict) -> dict:
    # every replica's placement line, even when two read alike; the whole pool starts before any batch
    return {**env, "RAY_DEDUP_LOGS": "0", "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}


def test_segment_pool_grows_from_zero_gpus_to_two_replicas(gpu_cluster, tmp_path, tiny_artifact, mixed_folder):
    address, env = gpu_cluster
    folder = mixed_folder["grey.png"].rsplit("/", 1)[0]
    done = run_job(
        "segment.py",
        "--input",
        folder,
        "--output",
        str(tmp_path / "out"),
        "--model",
        tiny_artifact,
        "--address",
        address,
        "--gpus-per-actor",
        "1",
        "--actors",
        "1:2",
        "--batch-size",
        "1",
        "--wait-for-nodes",
        "120",
        env=job_env(env),
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "waiting up to 120 s for the cluster to hold 1 model replicas of 1 CPU + 1 GPU" in done.stdout
    placed = [
        json.loads(line.split(PLACED, 1)[1]) for line in (done.stdout + done.stderr).splitlines() if PLACED in line
    ]
    # the pool ended with two replicas, each on a GPU node the autoscaler added (the head has no GPU)
    assert len({p["node_id"] for p in placed}) == 2 and all(p["gpu_ids"] == ["0"] for p in placed)
    (run,) = read_dataset(str(tmp_path / "out"), "runs").to_pylist()
    replicas = json.loads(run["replicas"])  # the replicas that segmented images
    assert replicas and all(r in placed for r in replicas)
    assert run["errors"] == 1 and run["ok"] == run["processed"] - 1  # corrupt.png is the one error row


def test_train_waits_for_two_gpu_workers(gpu_cluster, tmp_path):
    address, env = gpu_cluster
    write_scenes(tmp_path / "train", 16, seed=1)
    done = run_job(
        "train.py",
        "--images",
        str(tmp_path / "train" / "images"),
        "--masks",
        str(tmp_path / "train" / "masks"),
        "--output",
        str(tmp_path / "model"),
        "--storage",
        str(tmp_path / "checkpoints"),
        *TRAIN_ARGS,
        "--epochs",
        "1",
        "--use-gpu",
        "--address",
        address,
        env=job_env(env),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 workers x 1 CPU + 1 GPU" in done.stdout and "epoch 1/1:" in done.stdout
    assert (tmp_path / "model" / "model.keras").exists()
    # one GPU each: the two workers ran on two GPU nodes that the autoscaler added (the head has none)
    assert alive_gpus(address, env) == 2


def alive_gpus(address: str, env: dict) -> float:
    probe = (
        f"import ray; ray.init(address={address!r}); "
        "print(sum(n['Resources'].get('GPU', 0) for n in ray.nodes() if n['Alive']))"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


def test_more_than_the_autoscaler_can_add_is_one_line_after_the_wait(
    gpu_cluster, tmp_path, tiny_artifact, mixed_folder
):
    address, env = gpu_cluster
    done = run_job(
        "segment.py",
        "--input",
        mixed_folder["grey.png"],
        "--output",
        str(tmp_path / "out"),
        "--model",
        tiny_artifact,
        "--address",
        address,
        "--gpus-per-actor",
        "2",
        "--wait-for-nodes",
        "5",
        env=job_env(env),
        timeout=200,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "waited 5 s for 1 model replicas of 1 CPU + 2 GPU" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert read_dataset(str(tmp_path / "out"), "runs").num_rows == 0  # nothing committed, no lease left behind
    assert not any((tmp_path / "out" / "_leases").iterdir())
