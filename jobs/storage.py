"""Finding input images and writing outputs on local disk or any fsspec store (s3://...).

S3 goes through s3fs with the standard AWS credential chain (environment, config files,
instance or pod roles). Its settings live in fsspec's per-protocol config, so every fsspec
user in the process (unet_core's artifact loader included) sees them, and in the
`FSSPEC_S3` environment variable, which is how they reach the Ray workers.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import posixpath
import re
import stat
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Iterator

import fsspec
import fsspec.asyn
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.arguments import positive_int
from jobs.errors import MASK, UserError, never_print, redact
from unet_core import DEFAULT_MAX_PIXELS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LIST_EXTENSIONS = (".txt", ".csv", ".parquet")
LISTING_SCHEMA = pa.schema([
    ("image_uri", pa.string()), ("source_size", pa.int64()), ("source_version", pa.string()),
    ("source_modified", pa.timestamp("us", tz="UTC")),
])
Entry = tuple[str, int, str, "dt.datetime | None"]
"""A listed image: URI, size, version (mtime or ETag), modification time (orders versions)."""
S3_ENV_VAR = "FSSPEC_S3"
CREDENTIAL_NAME = re.compile(r"key|secret|token|passw|credential", re.IGNORECASE)
"""S3 settings whose values are credentials (s3fs' key, secret, token; botocore's aws_*_key_id, ...)."""
AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
S3_MAX_ATTEMPTS = 8
"""botocore's and pyarrow's standard retry modes retry throttling, 5xx and timeouts with jittered
exponential backoff, up to this many attempts per request."""


@dataclass(frozen=True)
class StorageOptions:
    """How to reach S3; credentials are never flags (the AWS chain provides them)."""

    endpoint_url: str | None = None
    anonymous: bool = False


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint-url", metavar="URL", default=None,
                        help="S3-compatible store to use instead of AWS (default: $AWS_ENDPOINT_URL if set)")
    parser.add_argument("--anonymous", action="store_true",
                        help="read S3 without credentials (public buckets)")


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The limits segment.py holds its images to, for the images and true masks of a labelled collection."""
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images and masks declaring more pixels, before decoding them "
                             f"(default: {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-bytes", type=positive_int, default=DEFAULT_MAX_BYTES,
                        help=f"refuse larger image and mask files before reading them (default: {DEFAULT_MAX_BYTES:,})")


def configure_storage(options: StorageOptions) -> dict[str, str]:
    """Apply the options to this process; returns the environment variables that carry them
    to other processes (Ray workers), which read them when they import fsspec.

    A `FSSPEC_S3` already in the environment (set by the user, or by the job's runtime env,
    which the workers share) is used as it is.
    """
    never_print(os.environ.get(name, "") for name in AWS_CREDENTIAL_VARS)
    given = os.environ.get(S3_ENV_VAR)
    retries = {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}
    settings = given_settings(given) if given else {"config_kwargs": {"retries": retries}}
    if options.endpoint_url:
        settings["endpoint_url"] = options.endpoint_url
    if options.anonymous:
        settings["anon"] = True
    encoded = json.dumps(settings, sort_keys=True)
    if given and json.loads(given) != settings:
        shown = json.dumps(redacted(json.loads(given)), sort_keys=True)
        raise UserError(f"--s3-endpoint-url/--anonymous: {S3_ENV_VAR} already holds the S3 settings ({shown}); "
                        "give them there or as flags, not both")
    fsspec.config.conf["s3"] = {**fsspec.config.conf.get("s3", {}), **settings}
    os.environ[S3_ENV_VAR] = encoded
    return {} if given else {S3_ENV_VAR: encoded}


@contextlib.contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn a storage failure into one line naming the URI (retries have already happened)."""
    try:
        yield
    except UserError:
        raise
    except PermissionError as exc:
        raise UserError(f"{uri}: access denied ({_reason(exc)}); check the AWS credentials, the endpoint "
                        "and the bucket policy") from exc
    except FileNotFoundError as exc:
        raise UserError(f"{uri}: not found ({_reason(exc)})") from exc
    except OSError as exc:
        raise UserError(f"{uri}: storage error ({_reason(exc)})") from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("botocore", "aiobotocore")):  # no credentials, endpoint unreachable
            raise UserError(f"{uri}: storage error ({_reason(exc)})") from exc
        raise


def given_settings(text: str) -> dict:
    """The S3 settings of `FSSPEC_S3`, their credentials registered so that no message shows them;
    a value that is no JSON object is refused without being shown (it may hold credentials)."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{S3_ENV_VAR} is not valid JSON ({exc.msg} at character {exc.pos}); "
                        "its value is not shown, as it may hold credentials") from None
    if not isinstance(settings, dict):
        raise UserError(f"{S3_ENV_VAR} must be a JSON object of s3fs settings, not a JSON {type(settings).__name__}")
    never_print(credentials(settings))
    return settings


def credentials(settings: object, secret: bool = False) -> Iterator[str]:
    """Every text value held under a credential's name, at any depth."""
    if isinstance(settings, dict):
        for name, value in settings.items():
            yield from credentials(value, secret or bool(CREDENTIAL_NAME.search(str(name))))
    elif isinstance(settings, list):
        for value in settings:
            yield from credentials(value, secret)
    elif secret and isinstance(settings, str):
        yield settings


def redacted(settings: object) -> object:
    """The settings with each credential's value masked, to be shown."""
    if isinstance(settings, dict):
        return {name: MASK if CREDENTIAL_NAME.search(str(name)) else redacted(value)
                for name, value in settings.items()}
    return [redacted(value) for value in settings] if isinstance(settings, list) else settings


def _reason(exc: BaseException) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return redact(reason.strip()) or type(exc).__name__


def check_writable(output: str) -> None:
    """Fail now, not after the whole run, when the output cannot be written: write and delete a
    small object (on S3 this also refuses a missing bucket instead of creating it)."""
    probe = join(output, f".write-check-{uuid.uuid4().hex}")
    with storage_errors(output):
        fs, path = filesystem(probe)
        if _protocol(fs) == "file":
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        elif _protocol(fs) in ("s3", "s3a") and not fs.exists(fs.split_path(path)[0]):
            raise UserError(f"{output}: bucket {fs.split_path(path)[0]!r} does not exist")
        fs.pipe_file(path, b"")
        fs.rm_file(path)


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for a URI, with the same S3 settings as fsspec's (endpoint,
    anonymous access, retries): for pyarrow readers and writers, and Ray Train's `storage_filesystem`,
    which otherwise would not know an S3-compatible endpoint."""
    if not uri.startswith(("s3://", "s3a://")):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    settings = fsspec.config.conf.get("s3", {})
    options = {"anonymous": bool(settings.get("anon")),
               "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS)}
    endpoint = settings.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https",
                       region=os.environ.get("AWS_REGION", "us-east-1"))
    return pafs.S3FileSystem(**options), uri.split("://", 1)[1]


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path for a URI."""
    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise UserError(f"{uri}: unsupported storage URI ({exc})") from exc


def join(root: str, *parts: str) -> str:
    """Join URI parts with '/', whatever the local OS."""
    return posixpath.join(root.rstrip("/"), *parts) if "://" in root else os.path.join(root, *parts)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_inputs(inputs: list[str]) -> pa.Table:
    """Every input image as a URI with its size, version (mtime or ETag) and modification time, in a stable order.

    Each input is a folder or prefix (recursive), a glob, a single image, or a list file
    (.txt one URI a line, .csv or .parquet with an `image_uri` or `uri` column).
    """
    rows: dict[str, tuple[int, str, dt.datetime | None]] = {}
    for spec in inputs:
        with storage_errors(spec):
            for uri, *about in _expand(spec):
                rows[uri] = tuple(about)
    uris = sorted(rows)
    return pa.table([uris, *([rows[u][i] for u in uris] for i in range(3))], schema=LISTING_SCHEMA)


def _expand(spec: str) -> Iterator[Entry]:
    fs, path = filesystem(spec)
    protocol = _protocol(fs)
    if any(ch in spec for ch in "*?[") and not fs.exists(path):
        matches = fs.glob(path, detail=True)
        if not matches:
            raise UserError(f"{spec}: the pattern matches no files")
        yield from ((_uri(protocol, p), *_version(info)) for p, info in sorted(matches.items()) if info["type"] == "file")
        return
    if not fs.exists(path):
        raise UserError(f"{spec}: {_what_is_missing(fs, path)}")
    if fs.isdir(path):
        yield from _walk(fs, protocol, path)
    elif path.lower().endswith(LIST_EXTENSIONS):
        yield from _read_list_file(fs, spec, path)
    else:
        yield (_uri(protocol, path), *_version(fs.info(path)))


def _what_is_missing(fs: fsspec.AbstractFileSystem, path: str) -> str:
    if _protocol(fs) in ("s3", "s3a"):
        bucket = fs.split_path(path)[0]
        if not fs.exists(bucket):
            return f"bucket {bucket!r} does not exist"
        return "no such object or prefix"
    return "no such file or folder"


def _walk(fs: fsspec.AbstractFileSystem, protocol: str, root: str) -> Iterator[Entry]:
    """Image files under a folder or prefix; never follows directory symlinks (no loops)."""
    if protocol == "file":
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                if is_image_name(name):
                    full = os.path.join(folder, name)
                    yield (full, *_local_version(full))
        return
    if protocol in ("s3", "s3a"):
        yield from _walk_s3(fs, protocol, root)
        return
    for path, info in sorted(fs.find(root, detail=True).items()):
        if info.get("type") == "file" and is_image_name(path):
            yield (_uri(protocol, path), *_version(info))


def _walk_s3(fs: fsspec.AbstractFileSystem, protocol: str, root: str) -> Iterator[Entry]:
    """Image objects under a prefix, one listing page (1,000 keys) at a time, in key order.

    `fs.find` would hold every key's full info dict (and a listings cache) at once; this keeps
    only URI, size and ETag per image.
    """
    bucket, key, _ = fs.split_path(root)
    request = {"Bucket": bucket, "Prefix": f"{key.rstrip('/')}/" if key else ""}
    pages = fs._list_pages("list_objects_v2", **request, **fs.req_kw).__aiter__()
    while True:
        try:
            page = fsspec.asyn.sync(fs.loop, pages.__anext__)
        except StopAsyncIteration:
            return
        for item in page.get("Contents", []):
            if is_image_name(item["Key"]):
                yield (f"{protocol}://{bucket}/{item['Key']}", int(item["Size"]), item["ETag"].strip('"'),
                       item["LastModified"])


def _local_version(path: str) -> tuple[int, str, dt.datetime | None]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, "", None  # unreadable (dangling link, loop): becomes an error row when read
    return stat.st_size, str(stat.st_mtime_ns), _timestamp(stat.st_mtime_ns / 1e9)


def _version(info: dict) -> tuple[int, str, dt.datetime | None]:
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    modified = info.get("LastModified") or info.get("mtime")
    return int(info.get("size") or 0), str(version).strip('"'), _timestamp(modified)


def _timestamp(value) -> dt.datetime | None:
    """A modification time of any spelling (epoch seconds, datetime, ISO text) as UTC, or None."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _read_list_file(fs: fsspec.AbstractFileSystem, spec: str, path: str) -> Iterator[Entry]:
    """URIs named in a list file, never looked up (that is the point of a list file for collections
    too large to list). Size and version come from `size` and `etag`/`version` columns where the
    file has them (as an S3 Inventory report does), and the modification time from a `last_modified`
    or `mtime` column; else they read as unknown (-1, '', null)."""
    base = spec.rsplit("/", 1)[0] if "/" in spec else "."
    for entry, *about in _list_file_entries(fs, spec, path):
        uri = entry if "://" in entry or os.path.isabs(entry) else join(base, entry)
        yield uri, *about


def _list_file_entries(fs: fsspec.AbstractFileSystem, spec: str, path: str) -> list[Entry]:
    if path.lower().endswith((".parquet", ".csv")):
        rows = _table_rows(fs, spec, path)
        column = next((c for c in ("image_uri", "uri", "path") if rows and c in rows[0]), None)
        if column is None:
            raise UserError(f"{spec}: a {path.rsplit('.', 1)[-1]} list file needs an image_uri, uri or path column")
        version = next((c for c in ("etag", "version", "mtime") if c in rows[0]), None)
        modified = next((c for c in ("last_modified", "mtime") if c in rows[0]), None)
        return [(str(row[column]).strip(), int(row["size"]) if row.get("size") not in (None, "") else -1,
                 str(row[version]).strip('"') if version and row[version] is not None else "",
                 _timestamp(_number_or_text(row[modified])) if modified else None)
                for row in rows if row[column] and str(row[column]).strip()]
    with fs.open(path, "r", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return [(line.strip(), -1, "", None) for line in lines if line.strip() and not line.startswith("#")]


def _number_or_text(value):
    """CSV cells are text: an epoch-seconds mtime there is a number all the same."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _table_rows(fs: fsspec.AbstractFileSystem, spec: str, path: str) -> list[dict]:
    try:
        if path.lower().endswith(".parquet"):
            with fs.open(path, "rb") as handle:
                return pq.read_table(handle).to_pylist()
        with fs.open(path, "r", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (pa.ArrowInvalid, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{spec}: cannot read list file ({exc})") from exc


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


def _uri(protocol: str, path: str) -> str:
    return path if protocol == "file" else f"{protocol}://{path}"


DEFAULT_MAX_BYTES = 1 << 30
"""Input images larger than this (1 GiB) are refused before reading: a decode task holds the whole file."""


class InputRefused(Exception):
    """An input image the job will not read; the message says why."""


def read_input(uri: str, listed_size: int, max_bytes: int) -> bytes:
    """An input image's bytes, refused unread when it is not a regular file (a symlink to a device
    or FIFO would hang or flood the task) or when it is larger than `max_bytes`."""
    fs, path = filesystem(uri)
    if _protocol(fs) == "file" and not stat.S_ISREG(os.stat(path).st_mode):
        raise InputRefused("not a regular file (a device, FIFO or socket): refused without reading it")
    if listed_size > max_bytes:
        raise InputRefused(f"file has {listed_size:,} bytes, above the limit of {max_bytes:,} "
                           "(raise --max-bytes to allow it)")
    with fs.open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        if listed_size < 0:  # listed without a size (a list file, a VOC list)
            raise InputRefused(f"file has more than {max_bytes:,} bytes, the limit (raise --max-bytes to allow it)")
        raise InputRefused(f"file grew past the limit of {max_bytes:,} bytes since it was listed")
    return data


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()
