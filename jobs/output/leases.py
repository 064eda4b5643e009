"""Run-id leases: one live attempt per run id, and a record of which runs are alive right now.

An attempt creates `OUTPUT/_leases/<run id>.json` with an exclusive create (O_EXCL on disk,
If-None-Match on S3) and rewrites its heartbeat while it runs. A second attempt of a live id is
refused; an attempt whose heartbeat stopped (or, on the same host, whose process is gone) is dead,
and its id can be run again. Maintenance reads the live leases so it never touches a live run.
Two attempts racing to take over one dead lease cannot both win: whichever loses the exclusive
create is refused, and the Delta commit itself accepts a run id once.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import socket
import threading
from dataclasses import dataclass

from jobs.common.errors import UserError
from jobs.common.private_apis import s3_call
from jobs.storage.files import filesystem, join

HEARTBEAT_SECONDS = 10.0
EXPIRY_SECONDS = 90.0
"""A lease whose heartbeat is older than this is dead: nine missed heartbeats."""
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_run_id() -> str:
    """Sortable by time, unique across concurrent runs, and never read as a number by hive partitioning."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id) or run_id.isdigit():
        raise UserError(f"run id {run_id!r}: use letters, digits, '.', '_' or '-' (not only digits), at most 128",
                        "run_id")
    return run_id


def lease_uri(output: str, run_id: str) -> str:
    return join(output, "_leases", f"{run_id}.json")


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    token: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float

    def age(self) -> float:
        return _now() - self.heartbeat_at

    def alive(self) -> bool:
        if self.age() > EXPIRY_SECONDS:
            return False
        return self.host != socket.gethostname() or _pid_alive(self.pid)

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, last heartbeat {self.age():.0f} s ago"


class Lease:
    """A held lease; heartbeats in a daemon thread until released."""

    def __init__(self, output: str, record: LeaseRecord):
        self.output, self.record = output, record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{record.run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                held = read(self.output, self.record.run_id)
                if held is None or held.token != self.record.token:
                    return
                self.record = LeaseRecord(**{**self.record.__dict__, "heartbeat_at": _now()})
                _overwrite(lease_uri(self.output, self.record.run_id), self.record)
            except OSError:
                continue  # a storage hiccup: the next beat tries again, long before expiry

    def check(self) -> None:
        """Just before commit: this attempt must still hold its lease."""
        held = read(self.output, self.record.run_id)
        if held is None or held.token != self.record.token:
            raise UserError(f"run {self.record.run_id}: this attempt lost its lease (its heartbeat stalled for "
                            f"over {EXPIRY_SECONDS:.0f} s and another attempt took over); not committing")

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        held = read(self.output, self.record.run_id)
        if held is not None and held.token == self.record.token:
            fs, path = filesystem(lease_uri(self.output, self.record.run_id))
            fs.rm_file(path)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(output: str, run_id: str) -> Lease:
    """Take the run id's lease, or refuse with one line naming the live attempt that holds it."""
    now = _now()
    record = LeaseRecord(run_id, secrets.token_hex(8), socket.gethostname(), os.getpid(), now, now)
    uri = lease_uri(output, run_id)
    if _create_exclusive(uri, record):
        return Lease(output, record)
    held = read(output, run_id)
    if held is not None and held.alive():
        raise UserError(f"run {run_id} is already in progress in {output} ({held.describe()}); "
                        "wait for it or pick another run id", "run_id")
    if held is not None:
        fs, path = filesystem(uri)
        fs.rm_file(path)
    if not _create_exclusive(uri, record):
        raise UserError(f"run {run_id}: another attempt took over its lease just now; wait for it or pick another run id",
                        "run_id")
    return Lease(output, record)


def read(output: str, run_id: str) -> LeaseRecord | None:
    fs, path = filesystem(lease_uri(output, run_id))
    try:
        return LeaseRecord(**json.loads(fs.cat_file(path)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # a torn write of a crashed attempt: as good as dead
        return LeaseRecord(run_id, "", "", 0, 0.0, 0.0)


def live_leases(output: str) -> list[LeaseRecord]:
    return [lease for lease in _all_leases(output) if lease.alive()]


def remove_dead(output: str, older_than_seconds: float = 86_400.0) -> int:
    """Delete the lease files of attempts that died over a day ago (a day, so that no takeover is
    racing the delete); returns how many."""
    removed = 0
    for lease in _all_leases(output):
        if not lease.alive() and lease.age() > older_than_seconds:
            fs, path = filesystem(lease_uri(output, lease.run_id))
            fs.rm_file(path)
            removed += 1
    return removed


def _all_leases(output: str) -> list[LeaseRecord]:
    fs, folder = filesystem(join(output, "_leases"))
    try:
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False, refresh=True)]
    except FileNotFoundError:
        return []
    held = [read(output, name[:-len(".json")]) for name in names if name.endswith(".json")]
    return [lease for lease in held if lease is not None]


def _create_exclusive(uri: str, record: LeaseRecord) -> bool:
    """Create the lease file only if none exists; False when one does."""
    fs, path = filesystem(uri)
    body = json.dumps(record.__dict__).encode()
    if "://" not in uri:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, "xb") as handle:
                handle.write(body)
            return True
        except FileExistsError:
            return False
    bucket, key, _ = fs.split_path(path)
    try:
        s3_call(fs, "put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        return True
    except OSError as exc:  # s3fs turns the 412 Precondition Failed into an OSError
        if _precondition_failed(exc):
            return False
        raise


def _precondition_failed(exc: OSError) -> bool:
    response = getattr(exc.__cause__, "response", None) or {}
    return (response.get("Error", {}).get("Code") == "PreconditionFailed"
            or response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412)


def _overwrite(uri: str, record: LeaseRecord) -> None:
    fs, path = filesystem(uri)
    body = json.dumps(record.__dict__).encode()
    if "://" in uri:
        fs.pipe_file(path, body)
        return
    temporary = f"{path}.{record.token}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(body)
    os.replace(temporary, path)


def check_conditional_writes(output: str) -> None:
    """Refuse an S3-compatible store that ignores If-None-Match: there two commits could overwrite
    each other's log entry, and two attempts could both hold a lease."""
    if "://" not in output or not output.startswith(("s3://", "s3a://")):
        return
    probe = join(output, "_leases", f".probe-{secrets.token_hex(8)}")
    record = LeaseRecord("probe", "", "", 0, 0.0, 0.0)
    first, second = _create_exclusive(probe, record), _create_exclusive(probe, record)
    fs, path = filesystem(probe)
    fs.rm_file(path)
    if not (first and not second):
        raise UserError(f"{output}: this store ignores conditional writes (If-None-Match), so concurrent runs could "
                        "overwrite each other's commits; use AWS S3 or a store that supports them")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> float:
    return dt.datetime.now(dt.timezone.utc).timestamp()
