"""Joining the Ray cluster a job was submitted to, or starting a local one."""

from __future__ import annotations

import logging
import os
import sys

LOG_LEVELS = ("debug", "info", "warning", "error")
TENSORFLOW_LEVELS = {"debug": "0", "info": "0", "warning": "1", "error": "2"}
"""TF_CPP_MIN_LOG_LEVEL for each level: TensorFlow's C++ logs know no debug level."""


def connect_ray(
    address: str | None, env_vars: dict[str, str] | None = None, verbosity: str = "normal", log_level: str | None = None
) -> None:
    """Join the cluster this job runs in (RAY_ADDRESS, set by `ray job submit`), else start Ray here.

    `env_vars` (the storage settings) go to every worker of the job through its runtime env.
    `verbosity`: "verbose" keeps all of Ray's log lines and Ray Data's progress blocks (a block of a
    dozen lines every 10 s when the output is not a terminal); "normal" keeps Ray's warnings and the
    workers' output, the job's own progress line standing for the blocks; "quiet" keeps only the
    job's own lines and errors (the workers' output too is dropped). `log_level` (one of LOG_LEVELS)
    overrides the level the verbosity implies, for Ray's loggers and, in this process and every
    worker it starts, TensorFlow's.
    """
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local" and "ray" not in sys.modules:
        # token auth, the mode Ray picks for a Ray it starts, named so that Ray does not warn that it
        # picked it; Ray reads the mode once, as it loads
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():  # a program running several jobs in one process keeps its Ray
        return
    if log_level:  # read by TensorFlow as it loads: set before any worker starts
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = TENSORFLOW_LEVELS[log_level]
        env_vars = {**(env_vars or {}), "TF_CPP_MIN_LOG_LEVEL": TENSORFLOW_LEVELS[log_level]}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    level_name = log_level or {"verbose": "info", "normal": "warning"}.get(verbosity, "error")
    level = getattr(logging, level_name.upper())
    ray.init(address=address, log_to_driver=verbosity != "quiet", runtime_env=runtime_env, logging_level=level)
    # importing Ray Data configures its loggers, so this comes first; its session log file keeps everything
    ray.data.DataContext.get_current().enable_progress_bars = verbosity == "verbose"
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(level)
    if verbosity != "verbose":  # the job's own progress line stands for the blocks Ray Data warns it turned off
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
