"""Listing a collection: folders and prefixes, globs, single images and list files, as one Arrow table.

The listing never holds a Python object per image, so a driver listing millions of images holds
little beyond the URI strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import functools
import decimal
import itertools
import os
import posixpath
import re
import sys
from typing import Iterable, Iterator, Union

import duckdb
import fsspec
import fsspec.asyn
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jobs.common.errors import UserError
from jobs.common.private_apis import s3_pages
from jobs.storage.list_pages import read_keys_fast
from jobs.storage.files import filesystem, protocol_of, storage_errors

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


LIST_EXTENSIONS = (".txt", ".csv", ".parquet")


LIST_COLUMNS = {
    "image_uri": ("image_uri", "uri", "path"),
    "size": ("size",),
    "version": ("etag", "version"),
    "modified": ("last_modified", "mtime"),
}
"""Columns of a .csv or .parquet list file, by role: the first name of each the file has is used; only
the URI is required."""


TIMESTAMP_US = pa.timestamp("us", tz="UTC")


LISTING_SCHEMA = pa.schema(
    [
        ("image_uri", pa.string()),
        ("source_size", pa.int64()),
        ("source_version", pa.string()),
        ("source_modified", TIMESTAMP_US),
    ]
)
"""A listed image: canonical URI, size, version (ETag, else mtime in ns), modification time (orders versions)."""


ArrowColumn = Union[pa.Array, pa.ChunkedArray]


@functools.cache
def listing_pool() -> pa.MemoryPool:
    """The allocator listings are built with. Arrow's default, mimalloc, leaves the driver's resident
    memory about 50% above what it holds after reading a list file of 10 million rows (it keeps the
    freed decode buffers); jemalloc about 10% (measured with bench/driver_memory.py). Made on first
    use, in the driver: every Ray worker that unpickles a function of a module importing this one
    would otherwise start jemalloc for nothing."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow build without jemalloc
        return pa.system_memory_pool()


LISTERS = 16
"""Listing requests in flight at once when a prefix is walked folder by folder."""
PAGES_AHEAD = 64
"""Pages of a walk (1,000 keys each) listed ahead of the consumer at most."""
CHUNK_ROWS = 65_536
"""Rows handled in Python at a time while listing: bounds the Python objects alive at once."""


SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)


SCHEME_ALIASES = {"s3a": "s3"}


NOT_CANONICAL = r"//|/\.\.?(/|$)|/$"
"""What `canonical_uri` removes from a local path: doubled slashes, dot segments, a trailing slash."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_inputs(inputs: list[str]) -> pa.Table:
    """Every input image as one LISTING_SCHEMA row, for listings a process may hold (a training set);
    a file named more than once is one row, as last named. A run's plan streams `iter_listing`."""
    with listing_memory():
        return _without_repeats(_concat(list(iter_listing(inputs))))


def iter_listing(inputs: list[str]) -> Iterator[pa.Table]:
    """Every input image as a LISTING_SCHEMA row (canonical URI, size, version, modification time), in
    tables of at most about CHUNK_ROWS rows as the listing goes: only the chunk in hand is held.

    Each input is a folder or prefix (recursive), a glob, a single image, or a list file (.txt one
    URI a line; .csv or .parquet with an `image_uri`, `uri` or `path` column and optional `size`,
    `etag`/`version` and `last_modified`/`mtime` columns). Rows come in the order of the inputs; a
    file named more than once comes as often as it is named (the consumer keeps the last).
    """
    for spec in inputs:
        with storage_errors(spec):
            yield from _expand(spec)


@contextlib.contextmanager
def listing_memory() -> Iterator[None]:
    """Arrow's default pool switched to `listing_pool()` for the duration (Parquet and CSV readers take
    no pool argument); buffers remember the pool they came from, so switching back is safe."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(listing_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def canonical_uri(uri: str, base: str | None = None) -> str:
    """The one spelling of a file's URI, however it was named, so that `--incremental` knows it again.

    Local paths become absolute and normalised (`./`, `a/../`, doubled and trailing slashes go;
    symlinks are not resolved) and lose `file://`; a scheme is lower-cased and `s3a://` read as
    `s3://`; an object key stays as written (in S3, `a//b` and `a/../b` are keys of their own). A
    relative path is relative to `base` (the folder of the list file naming it), else to the
    working directory.
    """
    match = SCHEME.fullmatch(uri)
    if match and match.group(1).lower() != "file":
        scheme = match.group(1).lower()
        return f"{SCHEME_ALIASES.get(scheme, scheme)}://{match.group(2)}"
    path = match.group(2) if match else uri
    if base is not None and not os.path.isabs(path):
        return _resolve(base, path)
    return os.path.abspath(os.path.expanduser(path))


def _resolve(base: str, relative: str) -> str:
    """A relative entry of a list file, against the list file's folder, as a relative link resolves:
    dot segments removed, never above the bucket."""
    if "://" not in base:
        return os.path.abspath(os.path.join(base, relative))
    scheme, rest = base.split("://", 1)
    bucket, _, folder = rest.partition("/")
    return f"{scheme}://{bucket}/{posixpath.normpath(posixpath.join('/', folder, relative)).lstrip('/')}"


def whole_folders(inputs: list[str]) -> list[str]:
    """The inputs that are folders or prefixes (not a glob, a list file or one image), as the prefix
    every image under them starts with: the listing walks each whole, so what it did not find there is
    gone."""
    folders = []
    for spec in inputs:
        uri = canonical_uri(spec)
        fs, path = filesystem(uri)
        with storage_errors(spec):
            if not any(ch in spec for ch in "*?[") and fs.isdir(path):
                folders.append(uri.rstrip("/") + "/")
    return folders


def _expand(spec: str) -> Iterator[pa.Table]:
    uri = canonical_uri(spec)
    fs, path = filesystem(uri)
    if any(ch in spec for ch in "*?[") and not fs.exists(path):
        matches = fs.glob(path, detail=True)
        if not matches:
            raise UserError(f"{spec}: the pattern matches no files")
        yield _found(fs, [(p, info) for p, info in sorted(matches.items()) if info["type"] == "file"])
    elif not fs.exists(path):
        raise UserError(f"{spec}: {_what_is_missing(fs, path)}")
    elif fs.isdir(path):
        yield from _walk(fs, path)
    elif path.lower().endswith(LIST_EXTENSIONS):
        yield from _read_list_file(fs, spec, uri, path)
    else:
        yield _found(fs, [(path, fs.info(path))])


def _what_is_missing(fs: fsspec.AbstractFileSystem, path: str) -> str:
    if protocol_of(fs) in ("s3", "s3a"):
        bucket = fs.split_path(path)[0]
        if not fs.exists(bucket):
            return f"bucket {bucket!r} does not exist"
        return "no such object or prefix"
    return "no such file or folder"


def _walk(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[pa.Table]:
    """Image files under a folder or prefix; never follows directory symlinks (no loops)."""
    protocol = protocol_of(fs)
    if protocol == "file":
        yield from _local_files(_walk_local(root))
    elif protocol in ("s3", "s3a"):
        yield from _walk_s3(fs, root)
    else:
        yield _found(
            fs,
            [
                (path, info)
                for path, info in sorted(fs.find(root, detail=True).items())
                if info.get("type") == "file" and is_image_name(path)
            ],
        )


def _walk_local(root: str) -> Iterator[str]:
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        yield from (os.path.join(folder, name) for name in sorted(files) if is_image_name(name))


def _walk_s3(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[pa.Table]:
    """Image objects under a prefix, listed by several listers at once: each folder level (delimiter
    `/`) is one paginated listing, and the folders it names are listed concurrently (at most LISTERS
    requests in flight), so against a store whose latency dominates (AWS S3) a prefix of many
    folders overlaps its requests' waits; where parsing the replies dominates (a store on loopback)
    it gains little (bench/listing.py). Each page becomes Arrow at once (`fs.find` would hold every
    key's info dict, and a listings cache) and is handed on as it comes, at most PAGES_AHEAD pages
    ahead of the consumer, so the walk holds pages, never the prefix. Pages come in the order
    they arrive; a single flat folder is still one paginator."""
    bucket, key, _ = fs.split_path(root)
    prefix = f"{key.rstrip('/')}/" if key else ""
    pages: asyncio.Queue = asyncio.Queue(PAGES_AHEAD)
    walk = asyncio.run_coroutine_threadsafe(_list_into(pages, fs, bucket, prefix), fs.loop)
    try:
        while (page := asyncio.run_coroutine_threadsafe(pages.get(), fs.loop).result()) is not None:
            yield page
        walk.result()  # the walk's error, if it ended in one
    finally:
        walk.cancel()


async def _list_into(pages: asyncio.Queue, fs: fsspec.AbstractFileSystem, bucket: str, prefix: str) -> None:
    """The walk, then its end marker (after an error too: the consumer then reads the error)."""
    try:
        await fs.set_session()
        read_keys_fast(await fs.get_s3(bucket))
        await _list_tree(pages, fs, bucket, prefix, asyncio.Semaphore(LISTERS))
    except asyncio.CancelledError:
        raise  # the consumer stopped: nobody waits for the end
    except Exception:
        await pages.put(None)
        raise
    await pages.put(None)


async def _list_tree(
    pages: asyncio.Queue, fs: fsspec.AbstractFileSystem, bucket: str, prefix: str, limit: asyncio.Semaphore
) -> None:
    """One folder's pages, then its subfolders' (listed concurrently)."""
    folders = []
    async with limit:  # held while this folder's pages come, never while its subfolders are listed
        async for page in s3_pages(fs, "list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/"):
            await pages.put(_page_table(bucket, page))
            folders += [folder["Prefix"] for folder in page.get("CommonPrefixes", [])]
    below = [asyncio.ensure_future(_list_tree(pages, fs, bucket, folder, limit)) for folder in folders]
    try:
        await asyncio.gather(*below)
    except BaseException:
        for task in below:  # one folder failed: the others stop too (gather leaves them running)
            task.cancel()
        raise


def _page_table(bucket: str, page: dict) -> pa.Table:
    items = [item for item in page.get("Contents", []) if is_image_name(item["Key"])]
    return _listing(
        pa.array([f"s3://{bucket}/{item['Key']}" for item in items], pa.string()),
        pa.array([int(item["Size"]) for item in items], pa.int64()),
        pa.array([item["ETag"].strip('"') for item in items], pa.string()),
        pa.array([item["LastModified"] for item in items], TIMESTAMP_US),
    )


def _found(fs: fsspec.AbstractFileSystem, found: list[tuple[str, dict]]) -> pa.Table:
    """Files named by a glob, a path or a generic walk, versioned as a walk of their store versions them."""
    protocol = protocol_of(fs)
    if protocol == "file":
        return _concat(list(_local_files(canonical_uri(path) for path, _ in found)))
    infos = [info for _, info in found]
    times = pa.array([_timestamp(info.get("LastModified") or info.get("mtime")) for info in infos], TIMESTAMP_US)
    etags = pa.array(
        [str(info.get("ETag") or info.get("etag") or "").strip('"') or None for info in infos], pa.string()
    )
    return _listing(
        pa.array([canonical_uri(f"{protocol}://{path}") for path, _ in found], pa.string()),
        pa.array([int(info.get("size") or 0) for info in infos], pa.int64()),
        _or_time_versions(etags, times),
        times,
    )


def _local_files(paths: Iterable[str]) -> Iterator[pa.Table]:
    """Local files with size and mtime, turned into Arrow a chunk at a time."""
    for chunk in _batched(paths, CHUNK_ROWS):
        stats = [_stat(path) for path in chunk]
        times = pa.array([mtime for _, mtime in stats], pa.int64()).cast(pa.timestamp("ns", "UTC"))
        yield _listing(
            pa.array(chunk, pa.string()),
            pa.array([size for size, _ in stats], pa.int64()),
            _time_versions(times),
            times,
        )


def _stat(path: str) -> tuple[int, int | None]:
    try:
        found = os.stat(path)
    except OSError:
        return -1, None  # unreadable (dangling link, loop): becomes an error row when read
    return found.st_size, found.st_mtime_ns


def _timestamp(value) -> dt.datetime | None:
    """A modification time from an fsspec info dict (epoch seconds, datetime or ISO text) as UTC, or None."""
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


def _listing(
    uris: ArrowColumn, sizes: ArrowColumn | None, versions: ArrowColumn | None, times: ArrowColumn | None
) -> pa.Table:
    """A LISTING_SCHEMA table; what is unknown reads -1, '' or null. Columns already of the right type
    are taken as they are, never copied."""
    rows = len(uris)
    size = (
        pa.repeat(pa.scalar(-1, pa.int64()), rows)
        if sizes is None
        else sizes.fill_null(-1)
        if sizes.null_count
        else sizes
    )
    version = (
        pa.repeat(pa.scalar("", pa.string()), rows)
        if versions is None
        else versions.fill_null("")
        if versions.null_count
        else versions
    )
    modified = pa.nulls(rows, TIMESTAMP_US) if times is None else pc.cast(times, TIMESTAMP_US, safe=False)
    return pa.table([uris, size, version, modified], schema=LISTING_SCHEMA)


def _time_versions(times: ArrowColumn) -> ArrowColumn:
    """The version of a file with no ETag: its modification time in nanoseconds since the epoch, as
    text. Walks of local files and list files both take it from here, so the two always agree."""
    return pc.cast(pc.cast(pc.cast(times, pa.timestamp("ns", "UTC")), pa.int64()), pa.string())


def _or_time_versions(versions: ArrowColumn | None, times: ArrowColumn | None) -> ArrowColumn | None:
    """The versions given, and the modification time's version where none is."""
    if times is None or (versions is not None and not versions.null_count):
        return versions
    return _time_versions(times) if versions is None else pc.coalesce(versions, _time_versions(times))


def _as_times(column: ArrowColumn) -> ArrowColumn:
    """A list file's modification times of any spelling as timestamps: timestamps as they are (naive
    ones are UTC), epoch seconds (numbers, or decimal text as `find -printf %T@` writes it, read to
    the nanosecond) or ISO 8601 text."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        return column
    if pa.types.is_integer(kind):
        return pc.multiply_checked(pc.cast(column, pa.int64()), 10**9).cast(pa.timestamp("ns", "UTC"))
    if pa.types.is_floating(kind):
        return pc.cast(pc.round(pc.multiply(column, 1e9)), pa.int64()).cast(pa.timestamp("ns", "UTC"))
    text = pc.cast(column, pa.string())
    if pc.all(pc.match_substring_regex(text, r"^-?\d+(\.\d*)?$")).as_py():
        return _decimal_seconds(text)
    try:
        return pc.cast(text, pa.timestamp("ns", "UTC"))
    except pa.ArrowInvalid:  # no zone given: UTC
        return pc.cast(text, pa.timestamp("ns")).cast(pa.timestamp("ns", "UTC"))


def _decimal_seconds(text: ArrowColumn) -> ArrowColumn:
    if pc.any(pc.match_substring_regex(text, r"\.\d{10}")).as_py():
        text = pc.replace_substring_regex(text, r"(\.\d{9})\d+$", r"\1")  # below a nanosecond: dropped
    seconds = pc.cast(text, pa.decimal128(20, 9))
    nanoseconds = pc.multiply(seconds, pa.scalar(decimal.Decimal(10**9), pa.decimal128(10, 0)))
    return pc.cast(nanoseconds, pa.int64()).cast(pa.timestamp("ns", "UTC"))


def _read_list_file(fs: fsspec.AbstractFileSystem, spec: str, uri: str, path: str) -> Iterator[pa.Table]:
    """Images named in a list file, never looked up: the point of a list file for collections too large
    to list. Relative entries are relative to the list file's folder; size, version and modification
    time come from the file's columns where it has them (as an S3 Inventory report does), else they
    read as unknown (-1, '', null) and every run finds those images new. The file is read a batch of
    rows at a time."""
    kind = path.lower().rsplit(".", 1)[-1]
    try:
        with fs.open(path, "rb") as handle:
            batches, roles = _read_table_list(handle, spec, kind) if kind != "txt" else _read_text_list(handle)
            first = True
            for batch in batches:
                raw = _named_rows(pa.Table.from_batches([batch]), roles["image_uri"], comments=kind == "txt")
                if raw.num_rows:
                    if first:
                        _say_if_no_image_is_named(spec, raw.column(roles["image_uri"]))
                        first = False
                    yield _list_rows(raw, roles, spec, uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{spec}: cannot read list file ({_first_line(exc)})") from exc


def _say_if_no_image_is_named(spec: str, entries: ArrowColumn) -> None:
    """A list file whose first entries name no image file (a text file of notes given to --input by
    mistake) is still read as a list, as asked; this line says what it was read as."""
    first = entries.slice(0, 1000).to_pylist()
    if not any(is_image_name(entry) for entry in first):
        print(
            f"{spec}: read as a list file, one image URI a line; none of its first {len(first)} entries names an "
            "image file (.jpg, .png, ...)",
            file=sys.stderr,
            flush=True,
        )


def _list_rows(raw: pa.Table, roles: dict[str, str], spec: str, uri: str) -> pa.Table:
    """A batch of a list file's rows as a listing."""
    column = {role: raw.column(name) for role, name in roles.items()}
    sizes = _sizes(column["size"], spec, roles["size"]) if "size" in roles else None
    versions = _versions(column["version"], spec, roles["version"]) if "version" in roles else None
    try:
        times = _as_times(column["modified"]) if "modified" in roles else None
        versions = _or_time_versions(versions, times)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UserError(f"{spec}: column {roles['modified']}: not a time ({_first_line(exc)})") from exc
    return _listing(_canonical_uris(column["image_uri"], uri.rsplit("/", 1)[0]), sizes, versions, times)


def _read_table_list(handle, spec: str, kind: str) -> tuple[Iterator[pa.RecordBatch], dict[str, str]]:
    """A .csv or .parquet list file's columns that matter (read as text from CSV) in batches, and which
    is which."""
    if kind == "parquet":
        parquet = pq.ParquetFile(handle, pre_buffer=False)  # pre-buffering would hold the whole file
        roles = _list_columns(parquet.schema_arrow.names, spec, kind)
        names = [field.name for field in parquet.schema_arrow if field.name in roles.values()]
        return parquet.iter_batches(batch_size=CHUNK_ROWS, columns=names, use_threads=False), roles
    roles = _list_columns(next(csv.reader([handle.readline().decode("utf-8-sig")]), []), spec, kind)
    handle.seek(0)
    names = sorted(set(roles.values()))
    options = pacsv.ConvertOptions(
        include_columns=names, column_types={name: pa.string() for name in names}, strings_can_be_null=True
    )
    return pacsv.open_csv(handle, convert_options=options), roles


def _list_columns(names: list[str], spec: str, kind: str) -> dict[str, str]:
    """Role -> the list file's column for it: the first of LIST_COLUMNS' names the file has."""
    roles = {
        role: next((name for name in candidates if name in names), None) for role, candidates in LIST_COLUMNS.items()
    }
    if roles["image_uri"] is None:
        raise UserError(
            f"{spec}: a {kind} list file needs an image_uri, uri or path column "
            f"(its columns: {', '.join(names) or 'none'})"
        )
    return {role: name for role, name in roles.items() if name is not None}


def _read_text_list(handle) -> tuple[Iterator[pa.RecordBatch], dict[str, str]]:
    """One URI a line, read by Arrow's CSV reader with no quoting and a separator no path holds."""
    roles = {"image_uri": "image_uri"}
    if not handle.read(1):
        return iter([]), roles
    handle.seek(0)
    return pacsv.open_csv(
        handle,
        read_options=pacsv.ReadOptions(column_names=["image_uri"]),
        parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={"image_uri": pa.string()}),
    ), roles


def _named_rows(raw: pa.Table, name: str, comments: bool) -> pa.Table:
    """The rows that name an image: URIs trimmed; empty rows (and `#` comment lines of a .txt) dropped."""
    uris = pc.cast(raw.column(name), pa.string())
    if pc.any(pc.match_substring_regex(uris, r"^\s|\s$")).as_py():
        uris = pc.utf8_trim_whitespace(uris)
    keep = pc.and_(pc.is_valid(uris), pc.not_equal(uris, ""))
    if comments:
        keep = pc.and_(keep, pc.invert(pc.starts_with(uris, "#")))
    raw = raw.set_column(raw.column_names.index(name), name, uris)
    return raw if pc.all(keep).as_py() and not uris.null_count else raw.filter(keep)


def _canonical_uris(uris: ArrowColumn, base: str) -> ArrowColumn:
    """`canonical_uri` of every entry of a list file. The usual ones (`s3://...`, clean absolute paths)
    are canonical already and pass untouched; only chunks holding others go through Python."""
    canonical = pc.or_(
        pc.starts_with(uris, "s3://"),
        pc.and_(pc.starts_with(uris, "/"), pc.invert(pc.match_substring_regex(uris, NOT_CANONICAL))),
    )
    if pc.all(canonical).as_py():
        return uris
    chunks = []
    for start in range(0, len(uris), CHUNK_ROWS):
        part = uris.slice(start, CHUNK_ROWS)
        if pc.all(canonical.slice(start, CHUNK_ROWS)).as_py():
            chunks.extend(part.chunks)
        else:
            chunks.append(pa.array([canonical_uri(entry, base) for entry in part.to_pylist()], pa.string()))
    return pa.chunked_array(chunks, pa.string())


def _sizes(column: ArrowColumn, spec: str, name: str) -> ArrowColumn:
    try:
        sizes = pc.cast(column, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UserError(f"{spec}: column {name}: not a whole number of bytes ({_first_line(exc)})") from exc
    smallest = pc.min(sizes).as_py()
    if smallest is not None and smallest < 0:
        raise UserError(f"{spec}: column {name}: not a whole number of bytes ({smallest})")
    return sizes


def _versions(column: ArrowColumn, spec: str, name: str) -> ArrowColumn:
    """A list file's versions as text: ETags unquoted, empty ones unknown (null)."""
    try:
        versions = pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UserError(f"{spec}: column {name}: not text ({_first_line(exc)})") from exc
    if pc.any(pc.match_substring_regex(versions, '^"|"$')).as_py():
        versions = pc.utf8_trim(versions, '"')  # ETags as S3 quotes them
    if pc.any(pc.equal(versions, "")).as_py():
        versions = pc.if_else(pc.equal(versions, ""), pa.scalar(None, pa.string()), versions)
    return versions


def _without_repeats(listing: pa.Table) -> pa.Table:
    """Each URI once, as last named. Candidates are the rows whose URIs share a 64-bit hash (DuckDB's,
    over the Arrow table in place), confirmed by comparing the URIs themselves: this holds two 8-byte
    hashes per row at most, never a second copy of the URIs."""
    uris, rows = listing.column("image_uri"), listing.num_rows
    if rows < 2 or pc.all(pc.less(uris.slice(0, rows - 1), uris.slice(1))).as_py():
        return listing  # strictly increasing already: no repeats
    hashes = _uri_hashes(listing)
    ordered = np.sort(hashes)
    shared = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    candidates = np.concatenate(
        [
            start + np.flatnonzero(np.isin(hashes[start : start + CHUNK_ROWS], shared))
            for start in range(0, rows, CHUNK_ROWS)
        ]
    )
    last: dict[str, int] = {}
    for position in candidates.tolist():  # in input order: a later mention replaces an earlier one
        last[uris[position].as_py()] = position
    dropped = np.setdiff1d(candidates, np.fromiter(last.values(), dtype=np.int64, count=len(last)))
    if not len(dropped):
        return listing
    keep = np.ones(rows, dtype=bool)
    keep[dropped] = False
    return listing.filter(pa.array(keep))


def _uri_hashes(listing: pa.Table) -> np.ndarray:
    """DuckDB's 64-bit hash of every URI, in row order, streamed into one preallocated array."""
    con = duckdb.connect()
    con.register("listing", listing.select(["image_uri"]))
    hashes = np.empty(listing.num_rows, dtype=np.uint64)
    filled = 0
    for batch in con.sql("SELECT hash(image_uri) FROM listing").to_arrow_reader(CHUNK_ROWS):
        hashes[filled : filled + batch.num_rows] = batch.column(0).to_numpy()
        filled += batch.num_rows
    return hashes


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if tables else LISTING_SCHEMA.empty_table()


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
