"""Run-id leases under the faults a cluster has every week, each produced for real: a host clock that
runs ahead (libfaketime), maintenance in another PID namespace on the same hostname (unshare), a store
that stops answering, attempts that race to take over a dead lease, an attempt that stalls and
wakes up after it was taken over, and a process stopped (SIGSTOP) while it holds a lease's lock.
Durations are shortened by setting the module's constants."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jobs.common.errors import UserError
from jobs.output import leases
from test_error_kinds import dropping_proxy
from test_segment_job import ROOT

PROBE = "from jobs.output import leases; print(len(leases.live_leases({output!r})))"
HOLDER = textwrap.dedent("""
    import sys, time
    from jobs.common.errors import UserError
    from jobs.output import leases
    held = [leases.acquire(sys.argv[1], run_id) for run_id in sys.argv[2:]]
    print("held", flush=True)
    while True:
        time.sleep(0.1)
        try:
            held[0].check()
            print("ok", flush=True)
        except UserError as exc:
            print("refused", exc, flush=True)
""")

LOCKER = textwrap.dedent("""
    import sys, time
    from jobs.output import leases
    with leases._LocalStore(sys.argv[1])._locked(leases.lease_uri(sys.argv[1], sys.argv[2])):
        print("locked", flush=True)
        time.sleep(600)
""")


def live_seen_by(output: str, *wrapper: str) -> int:
    done = subprocess.run(
        [*wrapper, sys.executable, "-c", PROBE.format(output=output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def hold(output: str, *run_ids: str) -> subprocess.Popen:
    """Another process holding leases, as another attempt's driver does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, output, *run_ids],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.skipif(shutil.which("faketime") is None, reason="libfaketime is not installed (.ci/run installs it)")
def test_a_host_clock_ahead_of_the_store_still_sees_the_live_lease(tmp_path):
    """Issue case 1: a maintenance host whose clock runs ahead read every live lease as expired."""
    output = str(tmp_path / "out")
    with leases.acquire(output, "live"):
        assert live_seen_by(output) == 1
        assert live_seen_by(output, "faketime", "-f", "+120s") == 1
        assert live_seen_by(output, "faketime", "-f", "+3h") == 1


def test_another_pid_namespace_on_the_same_hostname_still_sees_the_live_lease(tmp_path):
    """Issue case 1: containers with host networking share the hostname, not the PIDs."""
    output = str(tmp_path / "out")
    namespace = ["unshare", "--pid", "--fork"]
    if subprocess.run([*namespace, "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow a new PID namespace (unshare --pid needs root)")
    with leases.acquire(output, "live"):
        assert live_seen_by(output, *namespace) == 1


@pytest.mark.ray
def test_a_heartbeat_that_cannot_reach_the_store_keeps_trying_and_fences_the_commit(s3_server, s3_bucket, monkeypatch):
    """Issue case 1: botocore's EndpointConnectionError is no OSError; it ended the heartbeat, and the
    attempt committed on a lease that had expired."""
    import fsspec

    monkeypatch.setattr(leases, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(leases, "EXPIRY_SECONDS", 3.0)
    output = f"s3://{s3_bucket}/out"
    with dropping_proxy(s3_server.endpoint) as proxy:
        monkeypatch.setitem(
            fsspec.config.conf,
            "s3",
            {
                "endpoint_url": proxy.endpoint,
                "key": s3_server.env()["AWS_ACCESS_KEY_ID"],
                "secret": s3_server.env()["AWS_SECRET_ACCESS_KEY"],
                "skip_instance_cache": True,
                "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
            },
        )
        lease = leases.acquire(output, "unreachable")
        proxy.shutdown()
        proxy.server_close()  # the store's address now refuses every connection
        time.sleep(2.5)  # past a third of the 3 s expiry, which a writer may go without renewing
        heartbeat = lease._thread
        assert heartbeat.is_alive()  # still trying, whatever the client raised
        with pytest.raises(UserError, match="could not renew its lease"):
            lease.check()
        lease.release()


def test_of_attempts_racing_to_take_over_a_dead_lease_exactly_one_wins(tmp_path, monkeypatch):
    """Issue case 2: a takeover deleted and re-created the file, so two racing takeovers both won."""
    monkeypatch.setattr(leases, "EXPIRY_SECONDS", 1.0)
    output = str(tmp_path / "out")
    run_ids = [f"dead-{index}" for index in range(8)]
    holder = hold(output, *run_ids)
    holder.send_signal(signal.SIGKILL)  # every one of its leases is now dead, though nothing says so
    holder.wait()
    time.sleep(1.5)
    for run_id in run_ids:
        start, won, refused = threading.Barrier(3), [], []

        def take() -> None:  # the racers are joined within this iteration, so its variables are theirs
            start.wait()  # noqa: B023
            try:
                won.append(leases.acquire(output, run_id))  # noqa: B023
            except UserError as exc:
                refused.append(str(exc))  # noqa: B023

        racers = [threading.Thread(target=take) for _ in range(3)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert (len(won), len(refused)) == (1, 2), (run_id, refused)
        won[0].check()
        assert leases.observe(output, run_id).record.generation == 2
        won[0].release()


def test_an_attempt_that_stalled_and_was_taken_over_cannot_commit(tmp_path, monkeypatch):
    """Issue case 2: the stale attempt must not win back the lease when it wakes up."""
    monkeypatch.setattr(leases, "EXPIRY_SECONDS", 1.0)
    output = str(tmp_path / "out")
    stale = hold(output, "stalled")
    assert stale.stdout.readline().strip() == "ok"
    stale.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)
        successor = leases.acquire(output, "stalled")
        assert successor.generation == 2
    finally:
        stale.send_signal(signal.SIGCONT)
    lines = []
    for _ in range(400):
        lines.append(stale.stdout.readline().strip())
        if lines[-1].startswith("refused"):
            break
    stale.kill()
    stale.wait()
    assert lines[-1].startswith("refused") and "another attempt took over" in lines[-1], lines
    successor.check()  # the rightful attempt still holds its lease
    assert leases.observe(output, "stalled").record.token == successor.record.token
    successor.release()


def finishes(action, timeout: float = 60.0):
    """Run `action` in a thread and return what it returned or raised; fail if it is still waiting."""
    outcome = []

    def attempt() -> None:
        try:
            outcome.append(action())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"still waiting after {timeout:.0f} s"
    return outcome[0]


def test_a_process_stopped_holding_a_lease_lock_blocks_no_other_run_and_its_own_gives_up(tmp_path, monkeypatch):
    """A driver stopped (SIGSTOP, a frozen VM, a hung mount) in the instant it held a lock on disk: one
    lock for the whole folder hung every other run's commit and maintenance for as long as it stayed
    stopped. Now runs never share a lock, and a lock that is not let go is given up in seconds."""
    monkeypatch.setattr(leases, "LOCK_WAIT_SECONDS", 0.5)
    output = str(tmp_path / "out")
    stuck = leases.acquire(output, "stuck")
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, output, "stuck"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout.readline().strip() == "locked"
        locker.send_signal(signal.SIGSTOP)
        other = leases.acquire(output, "other")
        assert finishes(other.renew) is True
        assert finishes(other.check) is None
        assert finishes(other.release) is None
        assert isinstance(finishes(stuck.renew), leases.LeaseBusy)
        refused = finishes(stuck.check)
        assert isinstance(refused, UserError) and "could not confirm this attempt's lease" in str(refused), refused
        assert finishes(lambda: leases.remove_dead(output, older_than_seconds=0.0)) == 0
        assert leases.observe(output, "stuck").record.token == stuck.record.token
    finally:
        locker.kill()
        locker.wait()
    assert finishes(stuck.renew) is True  # the stopped holder is gone, and with it its lock
    stuck.release()
    assert leases.observe(output, "stuck") is None
    assert sorted(os.listdir(os.path.join(output, "_leases"))) == []  # no lock file left behind
