"""The architecture as a test: import-linter's contracts in pyproject.toml (commands above the library's
layers above unet_core; unet_core imports neither jobs nor ray)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    done = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "2 kept" in done.stdout


def test_drivers_and_readers_load_no_tensorflow():
    """Only model replicas and training workers pay TensorFlow's import (seconds per process): the
    commands' drivers plan from the artifact's metadata (so `--help` answers at once, `train.py`'s
    too), and Ray Train's data readers unpickle their functions from the training workers' module."""
    modules = [
        "jobs.segment",
        "jobs.train",
        "jobs.evaluate",
        "jobs.query",
        "jobs.report",
        "jobs.export_masks",
        "jobs.maintain",
        "jobs.training.loop",
    ]
    probe = f"import sys; import {', '.join(modules)}; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]
