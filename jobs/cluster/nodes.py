"""What every Ray job needs before its work starts: a connection, a replica layout, the model's facts."""
from __future__ import annotations

import os
import sys
from typing import Protocol

from jobs.cli.types import actor_bounds
from jobs.common.errors import UserError
from jobs.inference.pipeline import ModelInfo, Resources


class PoolFlags(Protocol):
    """The command-line flags that size a pool of model replicas (segment and evaluate share them)."""

    actors: str
    cpus_per_actor: float | None
    gpus_per_actor: float
    batch_size: int
    rows_per_file: int


def connect_ray(address: str | None, env_vars: dict[str, str] | None = None) -> None:
    """Join the cluster this job runs in (RAY_ADDRESS, set by `ray job submit`), else start Ray here.

    `env_vars` (the storage settings) go to every worker of the job through its runtime env.
    """
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local" and "ray" not in sys.modules:
        # token auth, the mode Ray picks for a Ray it starts, named so that Ray does not warn that it
        # picked it; Ray reads the mode once, as it loads
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():  # a program running several jobs in one process keeps its Ray
        return
    runtime_env = {"env_vars": env_vars} if env_vars else None
    ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    ray.data.DataContext.get_current().enable_progress_bars = True


def plan_resources(config: PoolFlags) -> Resources:
    """Turn the flags into an actor-pool layout that the cluster holds now or can grow to.

    On an autoscaling cluster GPU workers often start at zero: the request itself is the plan, and
    `await_nodes` gives the autoscaler time to add them. Only a cluster that can never hold the
    request (Ray started by this process, or node types the autoscaler declares) is refused at once.
    """
    gpus = config.gpus_per_actor
    cpus = config.cpus_per_actor or (1.0 if gpus else max(0.5, largest_node_cpus() - 0.5))
    bundle = replica_bundle(cpus, gpus)
    if config.actors == "auto":
        now, most = capacity(bundle)
        low, high, flag = 1, max(1, most or now), replica_flags(config)
    else:
        (low, high), flag = actor_bounds(config.actors), f"--actors {config.actors}"
    check_holds(bundle, high, flag, "replicas")
    return Resources(low, high, cpus, gpus, config.batch_size, rows_per_file=config.rows_per_file)


def capacity(bundle: dict[str, float]) -> tuple[int, int | None]:
    """How many bundles the cluster holds now, and at most (None: unknown, an autoscaler that does not
    declare its node types may add any)."""
    now = sum(fitting(bundle, node) for node in alive_nodes())
    declared = declared_node_types()
    if not (declared or started_here()):
        return now, None
    return now, max(now, sum(fitting(bundle, node) * count for node, count in declared))


def check_holds(bundle: dict[str, float], count: int, flag: str, what: str) -> None:
    _, most = capacity(bundle)
    if most is not None and count > most:
        raise UserError(f"{flag}: only {most} {what} of {describe(bundle)} fit on the cluster ({cluster_summary()})")


def largest_node_cpus() -> float:
    nodes = alive_nodes() + [node for node, _ in declared_node_types()]
    return max((node.get("CPU", 0) for node in nodes), default=1)


def replica_flags(config: PoolFlags) -> str:
    named = [f"--gpus-per-actor {config.gpus_per_actor:g}"] if config.gpus_per_actor else []
    if config.cpus_per_actor:
        named.append(f"--cpus-per-actor {config.cpus_per_actor:g}")
    return " ".join(named) or "the default replica size"


def replica_bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


def fitting(bundle: dict[str, float], node: dict) -> int:
    """How many bundles one node of these total resources holds."""
    return min(int(node.get(name, 0) // amount) for name, amount in bundle.items())


def alive_nodes() -> list[dict]:
    """Total resources of each live node (what is there, busy or not)."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def declared_node_types() -> list[tuple[dict, int]]:
    """(resources, max count) of every node type the autoscaler may add. Autoscaler v2 reports
    them; v1 does not, and then only the request and the wait can tell."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is None:
        return []
    return [(dict(group.resources), group.max_count if group.max_count >= 0 else 1024)
            for group in config.node_group_configs]


def started_here() -> bool:
    """A Ray that this process started has no autoscaler: what it holds now is all it ever holds."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node is not None and node.head


def await_nodes(bundle: dict[str, float], count: int, timeout_s: float, what: str) -> None:
    """Wait until the cluster holds `count` bundles, asking the autoscaler for them.

    A placement group of the bundles is the demand the autoscaler acts on (v1 and v2); it is
    released as soon as it is placed, for the job's own actors, and it dies with the driver, so a
    crashed job leaves no standing request that keeps nodes up.
    """
    from ray.util.placement_group import placement_group, remove_placement_group

    if sum(fitting(bundle, node) for node in alive_nodes()) >= count:
        return
    print(f"waiting up to {timeout_s:g} s for the cluster to hold {count} {what} of {describe(bundle)} "
          f"({cluster_summary()})", flush=True)
    group = placement_group([bundle] * count, strategy="PACK")
    try:
        if not group.wait(timeout_seconds=timeout_s):
            raise UserError(
                f"waited {timeout_s:g} s for {count} {what} of {describe(bundle)} and the cluster never held them "
                f"({cluster_summary()}): check the autoscaler's node types, "
                "max workers and cloud quota, or ask for less; --wait-for-nodes sets the wait")
    finally:
        remove_placement_group(group)


def describe(bundle: dict[str, float]) -> str:
    return " + ".join(f"{amount:g} {name}" for name, amount in bundle.items())


def cluster_summary() -> str:
    alive, declared = alive_nodes(), declared_node_types()

    def total(name: str) -> float:
        return sum(node.get(name, 0) for node in alive)

    def shape(node: dict) -> str:
        return describe({name: node.get(name, 0) for name in ("CPU", "GPU")})

    now = f"now {len(alive)} nodes with {total('CPU'):g} CPUs and {total('GPU'):g} GPUs"
    types = ", ".join(f"up to {count} x {shape(node)}" for node, count in declared)
    return f"{now}; the autoscaler's node types: {types}" if declared else now


def model_info(uri: str, allow_unsafe: bool = False) -> ModelInfo:
    """Load the artifact once here, so a refused, tampered or corrupt model is one clear error
    before any replica starts."""
    from unet_core import load_artifact

    meta = load_artifact(uri, allow_unsafe=allow_unsafe).metadata
    height, width = meta.input_size
    if height != width:
        raise UserError(f"{uri}: letterboxing needs a square model input, this one is {height}x{width}")
    return ModelInfo(uri, meta.name, meta.sha256, tuple(meta.class_names), tuple(meta.colors), height, meta.mode)
