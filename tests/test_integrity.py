"""Holes in the commit protocol, each produced as a cluster produces it and read back with deltalake:
an attempt that stalls after its last lease check and wakes up after its successor committed, time
stamps from the store that carry SQL, a run id with a trailing newline, and an S3 lease delete that
arrives after a takeover (a loopback proxy holds the request in flight). No Ray: runs of synthetic
parts."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import fsspec
import pytest
from delta_read import delta_sql, delta_table
from synthetic import run_record, write_run
from test_error_kinds import DroppingProxy, ForwardRequest, serving

from jobs.common.errors import UserError
from jobs.output import leases, tables

HOSTILE = "2026-01-01T00:00:00+00:00' AS listed_at; COPY (SELECT 42 AS owned) TO '{target}'; --"
"""A listed_at that closes the literal it was pasted into and writes a file of the attacker's choosing."""


@pytest.fixture()
def root(tmp_path) -> str:
    output = str(tmp_path / "out")
    tables.ensure_tables(output)
    return output


def rows_of(output: str, run_id: str) -> tuple[int, int]:
    """(rows, distinct images) of the run in `images`."""
    found = delta_sql(
        output, f"SELECT count(*) AS n, count(DISTINCT image_uri) AS d FROM images WHERE run_id = '{run_id}'"
    ).to_pylist()[0]
    return found["n"], found["d"]


def test_an_attempt_that_wakes_after_its_successor_committed_is_refused_not_committed_twice(root, monkeypatch):
    """Issue 27.2: the stale attempt passed its lease check, then stalled (a GC pause, a frozen VM)
    for longer than a takeover; its successor took the lease over and committed the run. When the
    stale attempt wakes up, its commit must be refused: before, it loaded a fresh snapshot after its
    check and committed the run's rows a second time (200 rows, 100 distinct)."""
    monkeypatch.setattr(leases, "EXPIRY_SECONDS", 1.0)
    parts = write_run(root, "twice", 0, 100, part_rows=50)
    record = run_record("twice", 100)
    stale = leases.acquire(root, "twice")
    woke, outcome = threading.Event(), []

    def stall_after_the_check() -> None:
        stale.check()
        stale._stop.set()  # frozen: no heartbeat either
        woke.wait(60)

    def stale_commit() -> None:
        try:
            outcome.append(tables.commit_run(root, record, parts, stall_after_the_check))
        except UserError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=stale_commit)
    thread.start()
    time.sleep(1.5)  # past the expiry: the lease is dead by the store's clock
    successor = leases.acquire(root, "twice")
    assert successor.generation == 2
    tables.commit_run(root, record, parts, successor.check)
    successor.release()
    woke.set()
    thread.join(60)
    assert isinstance(outcome[0], UserError) and "committed by another attempt" in str(outcome[0]), outcome
    assert rows_of(root, "twice") == (100, 100)
    assert delta_sql(root, "SELECT count(*) AS n FROM runs").column("n")[0].as_py() == 1


def test_a_listed_at_carrying_sql_runs_none_of_it_and_commits_nothing_more(root, tmp_path):
    """Issue 27.3: a commit's listed_at was pasted into DuckDB SQL; the COPY ran on the driver's host."""
    target = tmp_path / "owned.csv"
    parts = write_run(root, "hostile", 0, 10, part_rows=10)
    record = dataclasses.replace(run_record("hostile", 10), listed_at=HOSTILE.format(target=target))
    with pytest.raises(UserError, match="listed_at .* is not a time stamp"):
        tables.commit_run(root, record, parts)
    # the roll-forward reads the same record back from the images commit: refused again, nothing run
    with pytest.raises(UserError, match="listed_at .* is not a time stamp"):
        tables.complete_pending(root)
    assert not target.exists()
    assert delta_sql(root, "SELECT count(*) AS n FROM current").column("n")[0].as_py() == 0


def test_a_plan_carrying_sql_or_wrong_types_is_refused_in_one_line(root, tmp_path):
    """Issue 27.3, the plan's side: plan.json is read back from the store on every resume."""
    from jobs.output.plans import load_plan, plan_folder

    target = tmp_path / "owned.csv"
    fs, folder = fsspec.filesystem("file"), plan_folder(root, "hostile")
    good = {
        "run_id": "hostile",
        "inputs": 1,
        "skipped": 0,
        "planned": 1,
        "listed_at": "2026-01-01T00:00:00+00:00",
        "model_sha256": "0" * 64,
        "sources": ["in/"],
        "shards": 1,
    }
    fs.makedirs(folder, exist_ok=True)
    for bad in (
        {"listed_at": HOSTILE.format(target=target)},
        {"planned": "1; DROP"},
        {"sources": "in/"},
        {"run_id": "other"},
        {"shards": -1},
    ):
        fs.pipe_file(f"{folder}/plan.json", json.dumps({**good, **bad}).encode())
        with pytest.raises(UserError, match=f"run hostile: its plan .* {next(iter(bad))}"):
            load_plan(root, "hostile")
    fs.pipe_file(f"{folder}/plan.json", b"{not json")
    with pytest.raises(UserError, match="run hostile: its plan"):
        load_plan(root, "hostile")
    fs.pipe_file(f"{folder}/plan.json", json.dumps(good).encode())
    assert load_plan(root, "hostile").planned == 1
    assert not target.exists()


@pytest.mark.parametrize("run_id", ["night\n", "night\r\n", "\nnight", "night\x00"])
def test_a_run_id_with_a_line_break_or_control_character_is_refused(run_id):
    """Issue 27.4: `re.match` with `$` accepted a trailing newline."""
    with pytest.raises(UserError, match="run id"):
        leases.check_run_id(run_id)


class HoldingDeletes(DroppingProxy):
    """Forwards every request, except that a DELETE is held in flight until `release` is set, as a
    slow network holds a request that the client has already sent."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.failing = False
        self.held, self.release = threading.Event(), threading.Event()
        self.RequestHandlerClass = HeldDelete


class HeldDelete(ForwardRequest):
    def do_DELETE(self) -> None:
        self.server.held.set()
        self.server.release.wait(60)
        self.forward()


@pytest.mark.ray  # the suite's S3 server
def test_an_s3_lease_delete_that_arrives_after_a_takeover_leaves_the_new_lease(s3_server, s3_bucket, monkeypatch):
    """Issue 27.4: releasing a lease on S3 read its ETag, then deleted without a condition; a takeover
    whose write landed while the delete was in flight lost its new lease."""
    output = f"s3://{s3_bucket}/out"
    with serving(HoldingDeletes(s3_server.endpoint)) as proxy:
        monkeypatch.setitem(
            fsspec.config.conf,
            "s3",
            {
                "endpoint_url": proxy.endpoint,
                "key": s3_server.env()["AWS_ACCESS_KEY_ID"],
                "secret": s3_server.env()["AWS_SECRET_ACCESS_KEY"],
                "skip_instance_cache": True,
            },
        )
        first = leases.acquire(output, "released")
        releasing = threading.Thread(target=first.release)
        releasing.start()
        assert proxy.held.wait(30), "the release sent no DELETE"
        # meanwhile the lease is taken over: a conditional PUT, which the proxy passes at once
        store = leases._S3Store(output)
        held = leases.observe(output, "released")
        taken = store.replace(leases.lease_uri(output, "released"), b'{"generation": 2}', held.version)
        assert taken is not None
        proxy.release.set()
        releasing.join(60)
        assert not releasing.is_alive()
        found = store.read(leases.lease_uri(output, "released"))
    assert found is not None and found[1] == taken, "the takeover's lease was deleted"


def test_vacuum_keeps_the_parts_of_a_stalled_writer_whose_lease_expired_and_takes_an_abandoned_runs(root, monkeypatch):
    """Issue 27.1, the writer's side: a driver frozen (SIGSTOP) between its part check and its commit
    outlives its lease while maintenance runs; its parts are older than the retention. Vacuum must
    keep them (it may still wake up and commit, or a takeover resume them), and still delete the
    parts of a run nobody has held for longer than the retention."""
    from jobs.output.maintenance import retention_for, vacuum
    from test_leases import hold
    from test_tables import backdate

    monkeypatch.setattr(leases, "EXPIRY_SECONDS", 1.0)
    parts = {run_id: write_run(root, run_id, 0, 20, part_rows=10) for run_id in ("frozen", "abandoned")}
    writer = hold(root, "frozen")
    writer.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)
        assert not leases.live_leases(root)  # expired by the store's clock
        backdate(root, hours=3)
        vacuum(root, "images", retention_for(root, 1))
        vacuum(root, "class_stats", retention_for(root, 1))
    finally:
        writer.kill()
        writer.wait()
    left = {
        table: {name for name in os.listdir(os.path.join(root, table, "run_id=frozen"))} for table in tables.PARTITIONED
    }
    assert all({part.name for part in parts["frozen"]} <= names for names in left.values())
    assert not any(os.listdir(os.path.join(root, table, "run_id=abandoned")) for table in tables.PARTITIONED)
    tables.commit_run(root, run_record("frozen", 20), parts["frozen"])  # it wakes up and commits: readable
    assert rows_of(root, "frozen") == (20, 20)
    assert delta_sql(root, "SELECT count(*) AS n FROM class_stats WHERE run_id = 'frozen'").column("n")[0].as_py() > 0


def test_a_resume_with_other_result_flags_is_refused_naming_them(tmp_path, tiny_artifact):
    """Issue 27.11: a resume checked only the model and the inputs, so another --tta or --precision on
    the same run id mixed parts of two settings in one run. The plan is the first attempt's, made as
    the job makes it; the second attempt is the command, refused before Ray starts."""
    from jobs.inference.config import SegmentConfig
    from jobs.inference.model import model_info
    from jobs.inference.pipeline import with_model_mode
    from jobs.inference.run import _make_plan
    from jobs.storage.listing import iter_listing
    from test_segment_job import run_job
    from test_tables import make_images

    output, folder = str(tmp_path / "out"), str(tmp_path / "in")
    make_images(tmp_path / "in", 3)
    model = model_info(tiny_artifact, False)
    first = with_model_mode(SegmentConfig(inputs=[folder], output=output, model=tiny_artifact, run_id="mixed"), model)
    _make_plan(first, model, "mixed", iter_listing(first.inputs), time.time())
    again = run_job(
        "segment.py",
        "--input",
        folder,
        "--output",
        output,
        "--model",
        tiny_artifact,
        "--run-id",
        "mixed",
        "--tta",
        "flip",
        "--precision",
        "float32",
        env=dict(os.environ),
    )
    assert again.returncode == 2, again.stderr[-3000:]
    assert again.stderr.strip().splitlines() == [
        "error: run mixed was started with --tta none --precision auto; this attempt asks for --tta flip "
        "--precision float32: resume it with the same flags or pick another run id (--run-id)"
    ], again.stderr


def test_maintenance_removes_abandoned_plans_and_their_parts_and_keeps_the_rest(root, monkeypatch):
    """Issue 27.10: plans of runs nobody resumed stayed for ever. A plan goes when its run never
    committed, no attempt held the run id within the retention and the plan is older than it; its
    parts go with it. A plan as old whose run was held recently stays, and so does a young one."""
    from jobs.output.maintenance import MaintainConfig, maintain
    from jobs.output.plans import Plan, make_plan, planned_run_ids
    from test_planning import listing_chunks
    from test_tables import backdate

    monkeypatch.setattr(leases, "EXPIRY_SECONDS", 1.0)
    for run_id in ("abandoned", "held", "young"):
        make_plan(
            root,
            Plan(
                run_id,
                inputs=0,
                skipped=0,
                planned=0,
                listed_at="2026-01-01T00:00:00+00:00",
                model_sha256="ab" * 32,
                sources=["list"],
                shards=0,
            ),
            iter(listing_chunks(20, 8)),
            None,
        )
        write_run(root, run_id, 0, 10, part_rows=5)
    holder = leases.acquire(root, "held")
    holder._stop.set()  # the attempt stopped renewing: its lease expires, but was held within the retention
    time.sleep(1.5)
    past = time.time() - 3 * 3600
    backdate(root, hours=3)
    for run_id in ("abandoned", "held"):
        for folder, _, names in os.walk(os.path.join(root, "_plans", run_id)):
            for name in names:
                os.utime(os.path.join(folder, name), (past, past))
    report = maintain(MaintainConfig(root, retention_hours=1))
    assert report.abandoned_plans == ["abandoned"] and report.removed_plans == []
    assert planned_run_ids(root) == ["held", "young"]
    assert not os.listdir(os.path.join(root, "images", "run_id=abandoned"))
    assert len(os.listdir(os.path.join(root, "images", "run_id=held"))) == 2


CUT_COMMIT = """
import sys
sys.path.append(sys.argv[3])
from synthetic import run_record, write_run
from jobs.output import tables
parts = write_run(sys.argv[1], sys.argv[2], 5000, 20, part_rows=10)
print("written", flush=True)
sys.stdin.readline()
tables.commit_run(sys.argv[1], run_record(sys.argv[2], 20), parts)
"""


def commit_cut_after_images(output: str, run_id: str) -> None:
    """A driver (at the lowest CPU priority, so the watcher wins the race) frozen the moment its `images`
    commit landed, then killed: the run is in `images` and nowhere else."""
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    proc = subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-c", CUT_COMMIT, output, run_id, bench],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(bench),
    )
    assert proc.stdout.readline().strip() == "written"
    log = os.path.join(output, "images", "_delta_log")
    commit = os.path.join(log, f"{len([n for n in os.listdir(log) if n.endswith('.json')]):020d}.json")
    proc.stdin.write("\n")
    proc.stdin.flush()
    while not os.path.exists(commit) and proc.poll() is None:
        time.sleep(0.0005)
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_run_starts_read_only_the_images_commits_since_the_last_complete_one(root):
    """Issue 27.7: every run start read every add action of `images` and all of `runs` to find runs
    left mid-commit. Now `runs` carries a watermark (an app transaction's version): the `images`
    version through which every run is complete; a pass reads only the commits after it."""
    for night in range(3):
        tables.commit_run(
            root, run_record(f"night-{night}", 10), write_run(root, f"night-{night}", night * 10, 10, part_rows=10)
        )
    runs_version = delta_table(root, "runs").version()
    assert tables.complete_pending(root) == []  # a run start: 4 commits behind, it writes nothing
    assert delta_table(root, "runs").version() == runs_version
    assert tables.complete_pending(root, lag=1) == []  # maintenance moves the watermark up
    images_version = delta_table(root, "images").version()
    assert delta_table(root, "runs").transaction_version(tables.COMPLETE_THROUGH) == images_version
    commit_cut_after_images(root, "cut")
    if delta_sql(root, "SELECT count(*) AS n FROM runs WHERE run_id = 'cut'").column("n")[0].as_py():
        pytest.skip("the kill came after the runs commit")
    assert tables.complete_pending(root, lag=1) == ["cut"]
    assert delta_table(root, "runs").transaction_version(tables.COMPLETE_THROUGH) == images_version + 1
    counts = delta_sql(
        root,
        "SELECT (SELECT count(*) FROM images) AS i, (SELECT count(*) FROM current) AS c, "
        "(SELECT count(*) FROM runs) AS r",
    ).to_pylist()
    assert counts == [{"i": 50, "c": 50, "r": 4}]
    assert tables.complete_pending(root) == []


@pytest.mark.parametrize(
    "hostile", [{"class_stats_parts": [["../../current/x.parquet", 10, 1]]}, {"run_id": "../escape"}]
)
def test_a_commit_record_naming_files_or_runs_this_job_never_writes_is_refused(root, hostile):
    """The roll-forward takes a commit's facts from the store: a part name that leaves the run's folder,
    or a run id that is no run id, must not become an add action."""
    from deltalake import CommitProperties

    images = delta_table(root, "images")
    facts = {**run_record("forged", 0).commit_metadata(), "class_stats_parts": [], **hostile}
    images.create_write_transaction(
        [],
        mode="append",
        schema=images.schema(),
        partition_by=["run_id"],
        commit_properties=CommitProperties(custom_metadata={tables.RUN_KEY: json.dumps(facts)}),
    )
    with pytest.raises(UserError):
        tables.complete_pending(root)
    assert delta_sql(root, "SELECT count(*) AS n FROM class_stats").column("n")[0].as_py() == 0
