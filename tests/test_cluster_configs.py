"""The configs in cluster/, checked offline with Ray's own validation and the jobs' own argparse."""

import dataclasses
import importlib
import shlex
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_cluster_specs() -> list[tuple[str, dict, dict]]:
    """(file, metadata, RayCluster spec) for the RayCluster and every RayJob, scheduled or not."""
    specs = []
    for path in KUBERAY:
        manifest = load(path)
        spec = manifest["spec"]
        if manifest["kind"] == "RayCronJob":
            spec = spec["jobTemplate"]
        specs.append((path.name, manifest["metadata"], spec.get("rayClusterSpec", spec)))
    return specs


def job_commands() -> list[tuple[str, str]]:
    """(file, command) for every command of every shipped entrypoint (a shell line: `a && b`)."""
    commands = []
    for path in KUBERAY:
        manifest = load(path)
        job = manifest["spec"].get("jobTemplate", manifest["spec"])
        commands += [(path.name, command.strip()) for command in job.get("entrypoint", "").split("&&") if command]
    return commands


def parsed(command: str):
    """The command's config as the job's own argparse makes it."""
    python, script, *args = shlex.split(command)
    assert python == "python" and script.startswith("/home/ray/unet-segment/jobs/")
    module = importlib.import_module(f"jobs.{Path(script).stem}")
    config = module.parse_args(args)
    return config[0] if isinstance(config, tuple) else config


def test_launcher_yaml_passes_rays_config_validation():
    prepared = prepare_config(load(CLUSTER / "aws.yaml"))  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(prepared)
    nodes = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and not nodes["head"]["resources"].get("GPU")
    assert nodes["gpu_worker"]["min_workers"] == 0 and nodes["gpu_worker"]["max_workers"] >= 1
    assert nodes["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    # the project is on every node: mounted, then installed (GPU extra on the GPU workers)
    assert prepared["file_mounts"]["/home/ray/unet-segment"] == "."
    assert any("pip install" in c and "/home/ray/unet-segment" in c for c in prepared["head_setup_commands"])
    assert any("unet-segment[gpu]" in c for c in prepared["worker_setup_commands"])
    # nothing open to the world: SSH only from a stated range, the dashboard on loopback only
    rules = prepared["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start


@pytest.mark.parametrize("name, metadata, spec", ray_cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_cluster_spec_converts_to_a_valid_autoscaler_config(name, metadata, spec):
    config = _derive_autoscaling_config_from_ray_cr({"metadata": metadata, "spec": spec})  # validates it too
    head, gpu = config["available_node_types"]["headgroup"], config["available_node_types"]["gpu"]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 8
    assert gpu["resources"]["GPU"] == 1 and gpu["resources"]["CPU"] == 4
    assert gpu["min_workers"] <= gpu["max_workers"]
    assert spec["authOptions"]["mode"] == "token"  # Ray token auth, the secret KubeRay makes or ours
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    images = {
        c["image"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for c in group["template"]["spec"]["containers"]
    }
    assert images == {"REGISTRY/unet-segment:0.1.0"}  # the project's image (cluster/Dockerfile) everywhere
    if "train" in name:
        assert gpu["min_workers"] == 2  # two training workers on two pods


def test_rayjobs_and_the_nightly_schedule_have_the_fields_kuberay_needs():
    kinds = {path.name: load(path) for path in KUBERAY}
    assert {m["kind"] for m in kinds.values()} == {"RayCluster", "RayJob", "RayCronJob"}
    for manifest in kinds.values():
        assert manifest["apiVersion"] == "ray.io/v1" and manifest["metadata"]["namespace"] == "unet-segment"
    for name in ("rayjob-segment.yaml", "rayjob-train.yaml"):
        job = kinds[name]["spec"]
        assert job["shutdownAfterJobFinishes"] is True and job["submissionMode"] == "K8sJobMode"
        assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0
    nightly = kinds["raycronjob-nightly-segment.yaml"]["spec"]
    minute, hour, day, month, weekday = nightly["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*")  # once a day
    assert nightly["suspend"] is False and nightly["timeZone"] == "Etc/UTC"
    segment, maintain, drift = [
        command for name, command in job_commands() if name == "raycronjob-nightly-segment.yaml"
    ]
    one_off = dataclasses.asdict(parsed(kinds["rayjob-segment.yaml"]["spec"]["entrypoint"]))
    assert dataclasses.asdict(parsed(segment)) == {**one_off, "incremental": True}  # the one-off run, incremental
    assert parsed(maintain).output == one_off["output"]  # then the same tables compacted and vacuumed
    checked = parsed(drift)  # then the night compared with the nights before: status 6 fails the RayJob
    assert (checked.command, checked.output, checked.run) == ("drift", one_off["output"], None)
    assert nightly["jobTemplate"]["shutdownAfterJobFinishes"] is True


@pytest.mark.parametrize("name, command", job_commands(), ids=lambda v: v if v.endswith(".yaml") else "")
def test_every_job_command_line_parses_with_the_jobs_own_argparse(name, command):
    config = parsed(command)
    assert str(config.output).startswith("s3://")
    if hasattr(config, "actors"):  # the pool grows up to the GPU group's maxReplicas
        (spec,) = [spec for file, _, spec in ray_cluster_specs() if file == name]
        assert config.actors == f"1:{spec['workerGroupSpecs'][0]['maxReplicas']}"
