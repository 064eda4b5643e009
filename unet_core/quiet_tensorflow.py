"""Load TensorFlow without the lines a machine with no usable GPU prints that read like failures.

The `tensorflow` wheel without its CUDA libraries logs through Abseil, while loading and so before
TF_CPP_MIN_LOG_LEVEL applies, that it found no CUDA runtime (under Abseil's "WARNING: All log
messages before absl::InitializeLog()..." preamble), then an error once it fails to initialise
CUDA. On a host with no NVIDIA driver, or in a process given no GPU (CUDA_VISIBLE_DEVICES=""),
that is expected and no news, so those lines are dropped; on a GPU host they stay, since there
they say why the GPU is not used. Abseil's lines below TF_CPP_MIN_LOG_LEVEL (its `I` lines at 1,
`W` at 2, `E` at 3), which TensorFlow prints as it loads whatever the level says, are dropped too.
Every other line passes through.

Modules that use TensorFlow import this one first; CUDA is probed here, inside the filter.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

ABSL_PREAMBLE = "All log messages before absl::InitializeLog() is called are written to STDERR"
NO_GPU_LINES = ("Could not find cuda drivers on your machine", "failed call to cuInit")


def gpu_expected() -> bool:
    """Whether this process could use an NVIDIA GPU: one is visible to it and the host has the driver."""
    return os.environ.get("CUDA_VISIBLE_DEVICES") != "" and os.path.exists("/proc/driver/nvidia/version")


SEVERITIES = "IWE"
"""Abseil's severity letters, in the order TF_CPP_MIN_LOG_LEVEL counts them."""
ABSL_SEVERITY = re.compile(f"[{SEVERITIES}]\\d{{4}} ")


def below_level(line: str) -> bool:
    """Whether an Abseil line (`I0000 00:00:...`) is of a severity TF_CPP_MIN_LOG_LEVEL hides."""
    if not ABSL_SEVERITY.match(line):
        return False
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    return level.isdigit() and SEVERITIES.index(line[0]) < int(level)


def noise(line: str, expect_gpu: bool) -> bool:
    return ABSL_PREAMBLE in line or below_level(line) or (not expect_gpu and any(text in line for text in NO_GPU_LINES))


@contextlib.contextmanager
def stderr_without_noise(expect_gpu: bool) -> Iterator[None]:
    """Hold back what is written to file descriptor 2 (C++ logs too), then pass on all but the noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not noise(line, expect_gpu)))
            sys.stderr.flush()


with stderr_without_noise(gpu_expected()):
    import tensorflow as tf

    tf.config.list_physical_devices("GPU")
