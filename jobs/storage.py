"""Finding input images and writing outputs on local disk or any fsspec store (s3://...)."""
from __future__ import annotations

import csv
import os
import posixpath
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LIST_EXTENSIONS = (".txt", ".csv", ".parquet")
LISTING_SCHEMA = pa.schema([
    ("image_uri", pa.string()), ("source_size", pa.int64()), ("source_version", pa.string()),
])


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
    """Every input image as a URI with its size and version (mtime or ETag), in a stable order.

    Each input is a folder or prefix (recursive), a glob, a single image, or a list file
    (.txt one URI a line, .csv or .parquet with an `image_uri` or `uri` column).
    """
    rows: dict[str, tuple[int, str]] = {}
    for spec in inputs:
        for uri, size, version in _expand(spec):
            rows[uri] = (size, version)
    uris = sorted(rows)
    return pa.table(
        [uris, [rows[u][0] for u in uris], [rows[u][1] for u in uris]], schema=LISTING_SCHEMA
    )


def _expand(spec: str) -> Iterator[tuple[str, int, str]]:
    fs, path = filesystem(spec)
    protocol = _protocol(fs)
    if any(ch in spec for ch in "*?[") and not fs.exists(path):
        matches = fs.glob(path, detail=True)
        if not matches:
            raise UserError(f"{spec}: the pattern matches no files")
        yield from ((_uri(protocol, p), *_version(info)) for p, info in sorted(matches.items()) if info["type"] == "file")
        return
    if not fs.exists(path):
        raise UserError(f"{spec}: no such file or folder")
    if fs.isdir(path):
        yield from _walk(fs, protocol, path)
    elif path.lower().endswith(LIST_EXTENSIONS):
        yield from _read_list_file(fs, spec, path)
    else:
        yield (_uri(protocol, path), *_version(fs.info(path)))


def _walk(fs: fsspec.AbstractFileSystem, protocol: str, root: str) -> Iterator[tuple[str, int, str]]:
    """Image files under a folder or prefix; never follows directory symlinks (no loops)."""
    if protocol == "file":
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                if is_image_name(name):
                    full = os.path.join(folder, name)
                    yield (full, *_local_version(full))
        return
    for path, info in sorted(fs.find(root, detail=True).items()):
        if info.get("type") == "file" and is_image_name(path):
            yield (_uri(protocol, path), *_version(info))


def _local_version(path: str) -> tuple[int, str]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, ""  # unreadable (dangling link, loop): becomes an error row when read
    return stat.st_size, str(stat.st_mtime_ns)


def _version(info: dict) -> tuple[int, str]:
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return int(info.get("size") or 0), str(version).strip('"')


def _read_list_file(fs: fsspec.AbstractFileSystem, spec: str, path: str) -> Iterator[tuple[str, int, str]]:
    """URIs named in a list file, never looked up (that is the point of a list file for collections
    too large to list). Size and version come from `size` and `etag`/`version` columns where the
    file has them (as an S3 Inventory report does), else they read as unknown (-1, '')."""
    base = spec.rsplit("/", 1)[0] if "/" in spec else "."
    for entry, size, version in _list_file_entries(fs, spec, path):
        uri = entry if "://" in entry or os.path.isabs(entry) else join(base, entry)
        yield uri, size, version


def _list_file_entries(fs: fsspec.AbstractFileSystem, spec: str, path: str) -> list[tuple[str, int, str]]:
    if path.lower().endswith((".parquet", ".csv")):
        rows = _table_rows(fs, spec, path)
        column = next((c for c in ("image_uri", "uri", "path") if rows and c in rows[0]), None)
        if column is None:
            raise UserError(f"{spec}: a {path.rsplit('.', 1)[-1]} list file needs an image_uri, uri or path column")
        version = next((c for c in ("etag", "version", "mtime") if c in rows[0]), None)
        return [(str(row[column]).strip(), int(row["size"]) if row.get("size") not in (None, "") else -1,
                 str(row[version]).strip('"') if version and row[version] is not None else "")
                for row in rows if row[column] and str(row[column]).strip()]
    with fs.open(path, "r", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return [(line.strip(), -1, "") for line in lines if line.strip() and not line.startswith("#")]


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


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()
