"""Benchmark 4: peak memory of the whole job (driver and every Ray process) for N and 10N images.

    python bench/memory.py [--count 20] [--size 256] [--base-filters 32]

Memory is the sum of the proportional set size (PSS: shared pages split between the processes that
share them, so the object store is not counted once per process) of the job's process tree,
sampled every 0.2 s. Streaming means it should not grow with the number of images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from common import ROOT, print_table, seed_artifact, write_images


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for process in [root] + root.children(recursive=True):
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def peak_memory(args: list[str]) -> tuple[int, float]:
    """(peak bytes, wall seconds) of one segment.py run."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "segment.py"), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak, root = 0, psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_pss(root))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"segment.py failed:\n{stderr[-4000:]}")
    return peak, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--base-filters", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    artifact = seed_artifact(work, args.size, args.base_filters)
    rows = []
    for count in (args.count, 10 * args.count):
        images = write_images(work / f"images-{count}", count, 480, 640, seed=count)
        peak, wall = peak_memory(["--input", str(images), "--output", str(work / f"out-{count}"), "--model", artifact])
        rows.append([count, peak / 2**20, wall])
    print(
        f"segment.py, seed U-Net {args.size}x{args.size} base {args.base_filters}, default flags; "
        f"memory ratio 10N/N = {rows[1][1] / rows[0][1]:.3f}"
    )
    print_table(["images", "peak PSS MiB", "seconds"], rows)


if __name__ == "__main__":
    main()
