"""Run-id leases: one live attempt per run id, fenced, and judged by the store's clock alone.

An attempt creates `OUTPUT/_leases/<run id>.json` exclusively (O_EXCL on disk, If-None-Match on
S3) and renews it while it runs by a conditional rewrite (If-Match on the ETag it last wrote; on
disk, a compare-and-swap under an flock of that lease's own lock file, waited for a few seconds at
most, so a stalled process never blocks another run). A lease is alive while the store's own time
stamp of its last write (mtime, LastModified) is younger than EXPIRY_SECONDS by the store's own
clock (a probe file's mtime, an S3 reply's Date): no host's clock, PID or hostname is ever trusted.
Taking over a dead lease is the same conditional rewrite with the generation one higher, so of any
number of racing attempts exactly one wins, and an attempt that stalled and wakes up finds its
renewal refused. The generation is the fencing token: the writer checks it, and its own renewals,
right before it commits (`Lease.check`), and records it in the commit.

Maintenance keeps every file younger than the oldest live lease's start, as the store dates both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace

from jobs.common.errors import UserError
from jobs.common.private_apis import s3_call
from jobs.storage.files import filesystem, join

HEARTBEAT_SECONDS = 10.0
EXPIRY_SECONDS = 90.0
"""A lease whose last renewal is older than this, by the store's clock, is dead: nine missed heartbeats."""
SAFE_SHARE = 1 / 3
"""A writer commits only if its last successful renewal is younger than this share of the expiry
(by its own monotonic clock): a takeover needs the whole expiry to pass, so it cannot have happened."""
LOCK_WAIT_SECONDS = 5.0
"""How long a compare-and-swap on disk waits for a lease's lock: a holder that does not let go by then
is stalled (stopped, frozen, on a hung mount), and the write is given up as `LeaseBusy`, never waited
on for ever."""
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LeaseBusy(TimeoutError):
    """Another process holds this lease's lock and does not let go: nothing was decided, try again."""


def new_run_id() -> str:
    """Sortable by time, unique across concurrent runs, and never read as a number by hive partitioning."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id) or run_id.isdigit():
        raise UserError(
            f"run id {run_id!r}: use letters, digits, '.', '_' or '-' (not only digits), at most 128", "run_id"
        )
    return run_id


def lease_uri(output: str, run_id: str) -> str:
    return join(output, "_leases", f"{run_id}.json")


@dataclass(frozen=True)
class LeaseRecord:
    """The lease file's content. `host` and `pid` say who, for people; nothing decides by them."""

    run_id: str
    token: str
    generation: int
    started: float
    """When the run's first attempt took the lease, by the store's clock (seconds since the epoch)."""
    host: str = ""
    pid: int = 0
    planned: int = 0
    done: int = 0
    """Progress as of the last renewal, for `query.py live`: images in the run's plan, and in its parts."""

    def body(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


@dataclass(frozen=True)
class Observed:
    """A lease as the store shows it: its record, the version a conditional write must match, and
    its age by the store's clock."""

    record: LeaseRecord
    version: str
    age: float

    def alive(self) -> bool:
        return self.age <= EXPIRY_SECONDS

    def describe(self) -> str:
        return (
            f"host {self.record.host}, pid {self.record.pid}, generation {self.record.generation}, "
            f"renewed {self.age:.0f} s ago by the store's clock"
        )


class Lease:
    """A held lease: renewed in a daemon thread until released. A renewal that fails for any reason is
    logged and tried again; one refused by the store (another attempt took over) ends the lease."""

    def __init__(self, output: str, observed: Observed):
        self.output, self.record, self._version = output, observed.record, observed.version
        self.renewed = time.monotonic()
        self.lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.record.run_id}", daemon=True)
        self._thread.start()

    @property
    def generation(self) -> int:
        return self.record.generation

    def _beat(self) -> None:
        failures = 0
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if not self.renew():
                    return
                failures = 0
            except Exception as exc:  # whatever the store or its client raised: the next beat tries again
                failures += 1
                print(
                    f"run {self.record.run_id}: lease renewal failed ({failures} in a row; "
                    f"{type(exc).__name__}: {exc})",
                    file=sys.stderr,
                    flush=True,
                )

    def renew(self) -> bool:
        """Rewrite the lease if it is still this attempt's; False (and the lease lost) if not."""
        with self._lock:
            if self.lost:
                return False
            version = _store(self.output).replace(
                lease_uri(self.output, self.record.run_id), self.record.body(), self._version
            )
            if version is None:
                self.lost = True
                return False
            self._version, self.renewed = version, time.monotonic()
            return True

    def report_progress(self, planned: int, done: int) -> None:
        """Counts that the next renewal writes into the lease."""
        with self._lock:
            self.record = replace(self.record, planned=planned, done=done)

    def check(self) -> None:
        """Fencing, just before the commit: refuse unless this attempt renewed recently and still
        holds the lease now."""
        since, safe = time.monotonic() - self.renewed, EXPIRY_SECONDS * SAFE_SHARE
        if not self.lost and since > safe:
            raise UserError(
                f"run {self.record.run_id}: this attempt could not renew its lease for {since:.0f} s "
                f"(more than {safe:.0f} s); not committing, nothing is visible: run the same run id "
                "again"
            )
        try:
            refused = self.lost or not self.renew()
        except LeaseBusy as exc:
            raise UserError(
                f"run {self.record.run_id}: could not confirm this attempt's lease ({exc}); not "
                "committing, nothing is visible: run the same run id again"
            ) from exc
        if refused:
            raise UserError(
                f"run {self.record.run_id}: another attempt took over this attempt's lease (generation "
                f"{self.generation}); not committing, nothing is visible"
            )

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock, contextlib.suppress(Exception):  # a lease left behind expires on its own
            if not self.lost:
                _store(self.output).delete_if(lease_uri(self.output, self.record.run_id), self._version)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(output: str, run_id: str) -> Lease:
    """Take the run id's lease, or refuse with one line naming the live attempt that holds it. A dead
    attempt's lease is taken over with the next generation; the run's start stays the first attempt's."""
    store, uri = _store(output), lease_uri(output, run_id)
    mine = LeaseRecord(run_id, secrets.token_hex(8), 1, store.now(), socket.gethostname(), os.getpid())
    version = store.create(uri, mine.body())
    if version is not None:
        return Lease(output, Observed(mine, version, 0.0))
    held = observe(output, run_id)
    if held is not None and held.alive():
        raise UserError(
            f"run {run_id} is already in progress in {output} ({held.describe()}); wait for it or pick another run id",
            "run_id",
        )
    if held is not None:
        mine = replace(mine, generation=held.record.generation + 1, started=min(held.record.started, mine.started))
        with contextlib.suppress(LeaseBusy):  # a stalled taker holds the lock: it is not ours to take
            version = store.replace(uri, mine.body(), held.version)
    else:  # it was released between our create and our read
        version = store.create(uri, mine.body())
    if version is None:
        raise UserError(
            f"run {run_id}: another attempt took over its lease just now; wait for it or pick another run id", "run_id"
        )
    return Lease(output, Observed(mine, version, 0.0))


def observe(output: str, run_id: str) -> Observed | None:
    """The run id's lease as the store shows it now, or None."""
    store = _store(output)
    found = store.read(lease_uri(output, run_id))
    if found is None:
        return None
    body, version, modified = found
    return Observed(_record(run_id, body), version, store.now() - modified)


def live_leases(output: str) -> list[Observed]:
    return [lease for lease in all_leases(output) if lease.alive()]


def all_leases(output: str) -> list[Observed]:
    store = _store(output)
    names = store.names()
    found = [observe(output, name[: -len(".json")]) for name in names if name.endswith(".json")]
    return [lease for lease in found if lease is not None]


def store_now(output: str) -> float:
    """The store's clock, read now (seconds since the epoch)."""
    return _store(output).now()


def remove_dead(output: str, older_than_seconds: float = 86_400.0) -> int:
    """Delete the lease files of attempts that died over a day ago by the store's clock (a day, so that
    no takeover is racing the delete); returns how many."""
    store, removed = _store(output), 0
    for lease in all_leases(output):
        if lease.age > older_than_seconds:
            with contextlib.suppress(LeaseBusy):  # a stalled process holds it: the next maintenance removes it
                removed += store.delete_if(lease_uri(output, lease.record.run_id), lease.version)
    return removed


def check_conditional_writes(output: str) -> None:
    """Refuse an S3-compatible store that ignores If-None-Match or If-Match: there two commits could
    overwrite each other's log entry, and two attempts could both hold a lease."""
    if not output.startswith(("s3://", "s3a://")):
        return
    store, probe = _store(output), join(output, "_leases", f".probe-{secrets.token_hex(8)}")
    first = store.create(probe, b"1")
    honoured = first is not None and store.create(probe, b"2") is None and store.replace(probe, b"3", '"stale"') is None
    store.delete_if(probe, None)
    if not honoured:
        raise UserError(
            f"{output}: this store ignores conditional writes (If-None-Match, If-Match), so concurrent "
            "runs could overwrite each other's commits; use AWS S3 or a store that supports them"
        )


def _record(run_id: str, body: bytes) -> LeaseRecord:
    try:
        return LeaseRecord(**json.loads(body))
    except (ValueError, TypeError):  # a torn write, or a lease of an earlier version: taken over as dead
        return LeaseRecord(run_id, "", 0, 0.0)


class _LocalStore:
    """Leases on a local or shared file system: the file's mtime is the store's time stamp (set by the
    kernel or the file server, never by a process's clock), and compare-and-swap runs under an flock."""

    def __init__(self, output: str):
        self.folder = join(output, "_leases")

    def now(self) -> float:
        """The mtime the store gives a file written now: its clock, whatever this process's says."""
        os.makedirs(self.folder, exist_ok=True)
        probe = os.path.join(self.folder, f".clock-{secrets.token_hex(8)}")
        with open(probe, "wb"):
            pass
        try:
            return os.stat(probe).st_mtime
        finally:
            os.unlink(probe)

    def create(self, path: str, body: bytes) -> str | None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, "xb") as handle:
                handle.write(body)
        except FileExistsError:
            return None
        return _digest(body)

    def replace(self, path: str, body: bytes, expected: str) -> str | None:
        with self._locked(path):
            try:
                current = _read_bytes(path)
            except FileNotFoundError:
                return None
            if _digest(current) != expected:
                return None
            temporary = f"{path}.{secrets.token_hex(8)}.tmp"
            with open(temporary, "wb") as handle:
                handle.write(body)
            os.replace(temporary, path)
            return _digest(body)

    def read(self, path: str) -> tuple[bytes, str, float] | None:
        try:
            with open(path, "rb") as handle:
                body = handle.read()
                modified = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return body, _digest(body), modified

    def names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return []

    def delete_if(self, path: str, expected: str | None) -> bool:
        with self._locked(path) as lock_path:
            try:
                if expected is not None and _digest(_read_bytes(path)) != expected:
                    return False
                os.unlink(path)
                return True
            except FileNotFoundError:
                return False
            finally:
                if not os.path.exists(path):  # under the lock: a waiter on the unlinked file opens it anew
                    os.unlink(lock_path)

    @contextlib.contextmanager
    def _locked(self, path: str):
        """An flock on `.<lease name>.lock` beside the lease (a rename of the lease cannot swap it), one per
        lease so that runs never wait on each other, and given up as LeaseBusy after LOCK_WAIT_SECONDS."""
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        lock_path = os.path.join(folder, f".{os.path.basename(path)}.lock")
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if _try_flock(handle) and _same_file(handle, lock_path):
                    yield lock_path
                    return
            finally:
                os.close(handle)
            if time.monotonic() > deadline:
                raise LeaseBusy(
                    f"{path}: another process has held this lease's lock for over {LOCK_WAIT_SECONDS:.0f} s"
                )
            time.sleep(0.02)


class _S3Store:
    """Leases on S3: LastModified is the store's time stamp, a reply's Date header its clock, and the
    ETag the version that If-Match compares."""

    def __init__(self, output: str):
        self.fs, root = filesystem(output)
        self.bucket, self.folder = self.fs.split_path(root)[0], join(output, "_leases")

    def now(self) -> float:
        """The Date of a reply: the store's clock, to the second (as LastModified is)."""
        reply = s3_call(self.fs, "list_objects_v2", Bucket=self.bucket, MaxKeys=1)
        return email.utils.parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()

    def create(self, path: str, body: bytes) -> str | None:
        return self._put(path, body, IfNoneMatch="*")

    def replace(self, path: str, body: bytes, expected: str) -> str | None:
        return self._put(path, body, IfMatch=expected)

    def read(self, path: str) -> tuple[bytes, str, float] | None:
        bucket, key, _ = self.fs.split_path(path)
        try:
            reply = s3_call(self.fs, "get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        body = _sync_read(self.fs, reply["Body"])
        return body, reply["ETag"], reply["LastModified"].timestamp()

    def names(self) -> list[str]:
        try:
            return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.folder, detail=False, refresh=True))
        except FileNotFoundError:
            return []

    def delete_if(self, path: str, expected: str | None) -> bool:
        """A conditional delete (If-Match): a takeover that lands while the request is in flight keeps
        its lease, where reading the ETag first and then deleting would remove it."""
        bucket, key, _ = self.fs.split_path(path)
        try:
            s3_call(self.fs, "delete_object", Bucket=bucket, Key=key, **({"IfMatch": expected} if expected else {}))
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        return True

    def _put(self, path: str, body: bytes, **condition: str) -> str | None:
        bucket, key, _ = self.fs.split_path(path)
        try:
            return s3_call(self.fs, "put_object", Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
        except OSError as exc:  # s3fs turns 412 Precondition Failed (and 409 on a racing create) into OSError
            if _precondition_failed(exc):
                return None
            raise


def _store(output: str) -> _LocalStore | _S3Store:
    return _S3Store(output) if output.startswith(("s3://", "s3a://")) else _LocalStore(output)


def _precondition_failed(exc: OSError) -> bool:
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
    ) or response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)


def _sync_read(fs, stream) -> bytes:
    import fsspec.asyn

    async def read() -> bytes:
        try:
            return await stream.read()
        finally:
            stream.close()

    return fsspec.asyn.sync(fs.loop, read)


def _try_flock(handle: int) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _same_file(handle: int, path: str) -> bool:
    """Whether the locked file is still the one at `path`: a holder that deleted it leaves a lock on
    nothing, and its waiters must open the path again."""
    try:
        return os.fstat(handle).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
