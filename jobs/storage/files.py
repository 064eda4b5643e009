"""URIs and file systems: one spelling of paths, storage failures as one line, bounded reads."""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import uuid
from typing import Iterator

import fsspec
import fsspec.asyn

from jobs.common.errors import UserError, redact


@contextlib.contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn a storage failure into one line naming the URI (retries have already happened)."""
    try:
        yield
    except UserError:
        raise
    except PermissionError as exc:
        raise UserError(
            f"{uri}: access denied ({_reason(exc)}); check the AWS credentials, the endpoint and the bucket policy"
        ) from exc
    except FileNotFoundError as exc:
        raise UserError(f"{uri}: not found ({_reason(exc)})") from exc
    except OSError as exc:
        raise UserError(f"{uri}: storage error ({_reason(exc)})") from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("botocore", "aiobotocore")):  # no credentials, endpoint unreachable
            raise UserError(f"{uri}: storage error ({_reason(exc)})") from exc
        raise


def _reason(exc: BaseException) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return redact(reason.strip()) or type(exc).__name__


def check_writable(output: str) -> None:
    """Fail now, not after the whole run, when the output cannot be written: write and delete a
    small object (on S3 this also refuses a missing bucket instead of creating it)."""
    probe = join(output, f".write-check-{uuid.uuid4().hex}")
    with storage_errors(output):
        fs, path = filesystem(probe)
        if protocol_of(fs) == "file":
            if os.path.isfile(os.path.dirname(path)):
                raise UserError(f"{output}: is a file; the output root is a folder (or an s3:// prefix)", "output")
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        elif protocol_of(fs) in ("s3", "s3a") and not fs.exists(fs.split_path(path)[0]):
            raise UserError(f"{output}: bucket {fs.split_path(path)[0]!r} does not exist")
        fs.pipe_file(path, b"")
        fs.rm_file(path)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path for a URI."""
    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise UserError(f"{uri}: unsupported storage URI ({exc})") from exc


def join(root: str, *parts: str) -> str:
    """Join URI parts with '/', whatever the local OS."""
    return posixpath.join(root.rstrip("/"), *parts) if "://" in root else os.path.join(root, *parts)


def protocol_of(fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


DEFAULT_MAX_BYTES = 1 << 30
"""Input images larger than this (1 GiB) are refused before reading: a decode task holds the whole file."""


TRANSIENT_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestExpired",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "SlowDown",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestTimeTooSkewed",
    }
)
"""S3 error codes that say nothing about the object: the caller's session token expired or was
refused, the store throttled, or the caller's clock was off. Asked again later, the same read works;
`AccessDenied` (a bucket policy) and `NoSuchKey` stay as they are."""


def store_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind a storage exception (s3fs maps botocore's ClientError to OSErrors such
    as PermissionError and keeps it as the cause), or None."""
    for cause in (exc, exc.__cause__, exc.__context__):
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a failed read may succeed when tried again later, whatever Python error it became."""
    code = store_error_code(exc)
    if code is not None:
        return code in TRANSIENT_CODES
    return not isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError))


class InputRefused(Exception):
    """An input image the job will not read; the message says why."""


def read_input(uri: str, listed_size: int, max_bytes: int) -> bytes:
    """An input image's bytes, refused unread when it is not a regular file (a symlink to a device
    or FIFO would hang or flood the task) or when it is larger than `max_bytes`."""
    fs, path = filesystem(uri)
    if protocol_of(fs) == "file" and not stat.S_ISREG(os.stat(path).st_mode):
        raise InputRefused("not a regular file (a device, FIFO or socket): refused without reading it")
    if listed_size > max_bytes:
        raise InputRefused(f"file has {listed_size:,} bytes, above the max_bytes limit of {max_bytes:,}")
    with fs.open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        if listed_size < 0:  # listed without a size (a list file, a VOC list)
            raise InputRefused(f"file has more than {max_bytes:,} bytes, the max_bytes limit")
        raise InputRefused(f"file grew past the limit of {max_bytes:,} bytes since it was listed")
    return data


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()
