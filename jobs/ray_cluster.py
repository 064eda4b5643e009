"""What every Ray job needs before its work starts: a connection, a replica layout, the model's facts."""
from __future__ import annotations

import os
import sys
from typing import Protocol

from jobs.arguments import actor_bounds
from jobs.errors import UserError
from jobs.pipeline import ModelInfo, Resources


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
    """Turn the flags and what the cluster has into an actor-pool layout."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    max_node_cpus = max((n.get("CPU", 0) for n in nodes), default=1)
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    gpus = config.gpus_per_actor
    if gpus > 0 and total_gpus < gpus:
        raise UserError(f"--gpus-per-actor {gpus}: the cluster has {total_gpus:g} GPUs")
    cpus = config.cpus_per_actor or (1.0 if gpus else max(0.5, max_node_cpus - 0.5))
    if cpus > max_node_cpus:
        raise UserError(f"--cpus-per-actor {cpus:g}: no node has that many CPUs (largest: {max_node_cpus:g})")
    fit = sum(int(n.get("GPU", 0) // gpus) for n in nodes) if gpus else sum(int(n.get("CPU", 0) // cpus) for n in nodes)
    if config.actors == "auto":
        low, high = 1, max(1, fit)
    else:
        low, high = actor_bounds(config.actors)
    if gpus and high > fit:
        raise UserError(f"--actors {config.actors}: only {fit} replicas of {gpus:g} GPU fit on the cluster's GPUs")
    return Resources(low, high, cpus, gpus, config.batch_size, rows_per_file=config.rows_per_file)


def model_info(uri: str, allow_unsafe: bool = False) -> ModelInfo:
    """Load the artifact once here, so a refused, tampered or corrupt model is one clear error
    before any replica starts."""
    from unet_core import load_artifact

    meta = load_artifact(uri, allow_unsafe=allow_unsafe).metadata
    height, width = meta.input_size
    if height != width:
        raise UserError(f"{uri}: letterboxing needs a square model input, this one is {height}x{width}")
    return ModelInfo(uri, meta.name, meta.sha256, tuple(meta.class_names), tuple(meta.colors), height)
