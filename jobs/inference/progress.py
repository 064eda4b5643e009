"""What a long run says about itself while it runs: a line in the job log every so often, and the
same counts in its lease, where `query.py live` reads them."""

from __future__ import annotations

import threading
import time

from jobs.cluster.capacity import STAGES, bound


class Progress:
    """Counts the parts as they come back from the pipeline (so the counts move a part at a time) and
    prints a line on a timer, whether or not a part came. The rate and ETA are over this attempt's own
    images: parts kept from an earlier attempt are done, not fast."""

    def __init__(self, run_id: str, planned: int, resumed: int, every_seconds: float, report=None):
        self.run_id, self.planned, self.resumed, self.every = run_id, planned, resumed, every_seconds
        self.report = report
        """Called with (planned, done) on every part: the lease carries the latest in its next renewal."""
        self.processed = self.errors = 0
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.spare: float | None = None
        """CPUs per replica that no replica reserves, once the pool is laid out (`spare_cpus_per_replica`)."""
        self._told_bound = False
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name=f"progress-{run_id}", daemon=True)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            print(self.line(), flush=True)

    def add(self, part: dict) -> None:
        self.processed += int(part["rows"])
        self.errors += int(part["rows"]) - int(part["ok"])
        for stage in STAGES:
            self.seconds[stage] += float(part.get(f"seconds_{stage}", 0.0))
        self._tell_a_cpu_bound()
        if self.report is not None:
            self.report(self.planned, self.done)

    def _tell_a_cpu_bound(self) -> None:
        """Once per run, as soon as its first parts show it: replicas that wait on the CPU side are
        GPUs paid for and idle, and the remedy (more CPUs per replica) is the user's to take."""
        limit = bound(self.seconds, self.spare)
        if limit is None or limit.stage == "model" or self._told_bound:
            return
        self._told_bound = True
        print(
            f"run {self.run_id}: the replicas wait: {limit.line()}; give the CPU side more CPUs "
            "(docs/cluster.md#cpus-per-gpu)",
            flush=True,
        )

    @property
    def done(self) -> int:
        return self.resumed + self.processed

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.processed / elapsed if elapsed > 0 else 0.0
        left = self.planned - self.done
        eta = _duration(left / rate) if rate > 0 else "unknown"
        share = self.done / self.planned if self.planned else 1.0
        limit = bound(self.seconds, self.spare)
        return (
            f"run {self.run_id}: {self.done:,}/{self.planned:,} images ({share:.1%}), {rate:.1f} images/s, "
            f"ETA {eta}, {self.errors:,} errors so far" + (f"; {self.stages()}, {limit.line()}" if limit else "")
        )

    def stages(self) -> str:
        """Per image, what each stage cost so far (the model's in replica time)."""
        per = {stage: value / max(self.processed, 1) * 1000 for stage, value in self.seconds.items()}
        return "per image " + ", ".join(f"{stage} {ms:.3g} ms" for stage, ms in per.items())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
