"""The progress line: counts, rate and, once the model has run, where the time goes and what bounds the run."""

from jobs.cluster.capacity import bound
from jobs.inference.progress import Progress


def part(rows: int, **seconds: float) -> dict:
    return {"rows": rows, "ok": rows, **{f"seconds_{stage}": value for stage, value in seconds.items()}}


def test_the_line_names_the_stage_that_bounds_the_run_once_the_model_has_run():
    progress = Progress("night", planned=100, resumed=0, every_seconds=60)
    progress.spare = 0.5
    assert "bound by" not in progress.line()  # no part yet
    progress.add(part(10, read=0.1, decode=3.0, model=1.0, postprocess=0.5, write=0.1))
    line = progress.line()
    assert line.startswith("run night: 10/100 images (10.0%), ")
    assert (
        "; per image read 10 ms, decode 300 ms, model 100 ms, postprocess 50 ms, write 10 ms, "
        "bound by decode: 3.7 CPUs per replica keep it busy, 0.5 are spare"
    ) in line


def test_a_cheap_cpu_side_leaves_the_model_as_the_bound():
    limit = bound({"read": 0.1, "decode": 0.2, "model": 10.0, "postprocess": 0.1, "write": 0.1}, spare=0.5)
    assert (limit.stage, round(limit.cpus_per_replica, 3)) == ("model", 0.05)
    assert limit.line() == "bound by the model (0.05 CPUs per replica keep it busy, 0.5 are spare)"
    assert bound({"read": 1.0, "decode": 1.0, "model": 0.0}, spare=4) is None  # no model time yet


def test_parts_written_by_an_earlier_version_carry_no_seconds_and_count_as_none():
    progress = Progress("night", planned=10, resumed=0, every_seconds=60)
    progress.spare = 1.0
    progress.add({"rows": 5, "ok": 5})
    assert "bound by" not in progress.line()


def test_replicas_that_wait_on_the_cpu_side_are_told_once(capsys):
    """Issue 28: a run whose replicas wait on decode says so once, with the remedy."""
    progress = Progress("night", planned=100, resumed=0, every_seconds=60)
    progress.spare = 0.5
    progress.add(part(10, read=0.1, decode=0.2, model=1.0, postprocess=0.1, write=0.1))
    assert capsys.readouterr().out == ""  # bound by the model: nothing to say
    for _ in range(3):
        progress.add(part(10, read=0.1, decode=9.0, model=1.0, postprocess=0.5, write=0.1))
    assert capsys.readouterr().out.splitlines() == [
        "run night: the replicas wait: bound by decode: 5.1 CPUs per replica keep it busy, 0.5 are spare; "
        "give the CPU side more CPUs (docs/cluster.md#cpus-per-gpu)"
    ]
