"""Joining the Ray cluster a job was submitted to, or starting a local one."""
from __future__ import annotations

import os
import sys


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
