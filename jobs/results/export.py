"""One mask file per image of a committed run, named after its source image, with an index."""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.dataset as pads

from jobs.common.errors import UserError
from jobs.output.readers import check_run, connect, select_scope
from jobs.output.tables import committed_dataset, scan_field
from jobs.storage.files import filesystem, join, storage_errors
from jobs.storage.settings import StorageOptions, configure_storage

INDEX_NAME = "masks.csv"


MASK_BATCH_ROWS = 256


@dataclass(frozen=True)
class ExportConfig:
    output: str
    dest: str
    run: str | None = None
    relative_to: str | None = None
    s3_endpoint_url: str | None = None
    anonymous: bool = False


def strip_scheme(uri: str) -> str:
    return posixpath.normpath(uri.split("://", 1)[-1]) if uri else uri


def common_folder(uris: list[str]) -> str:
    """The deepest folder holding every image, so the mirror starts where the inputs differ."""
    try:
        return posixpath.commonpath([posixpath.dirname(strip_scheme(u)) for u in uris])
    except ValueError:  # absolute and relative paths mixed: no common folder
        return ""


def safe_relative(uri: str, root: str) -> str:
    """The image's path below `root` with its extension made `.png`; '..', '.' and empty parts can never climb out."""
    path = strip_scheme(uri)
    if root and path.startswith(root.rstrip("/") + "/"):
        path = path[len(root.rstrip("/")) + 1 :]
    parts = ["__" if part == ".." else part for part in path.split("/") if part not in ("", ".")]
    stem = posixpath.splitext(parts.pop())[0] if parts else ""
    return posixpath.join(*parts, (stem or "_") + ".png")


def mask_names(rows: list[tuple[str, str]], root: str) -> dict[str, str]:
    """image_id -> mask path under the destination; names two images would share get the image id added."""
    wanted = {image_id: safe_relative(uri, root) for image_id, uri in rows}
    taken: dict[str, int] = {}
    for name in wanted.values():
        taken[name] = taken.get(name, 0) + 1
    return {
        image_id: name if taken[name] == 1 else f"{name[:-4]}-{image_id[:8]}.png" for image_id, name in wanted.items()
    }


def checked_target(dest: str, name: str) -> str:
    """The URI to write; on local disk also refuses a path that a symlink inside DEST leads outside it."""
    target = join(dest, *name.split("/"))
    if "://" not in dest:
        top = os.path.realpath(dest)
        if os.path.commonpath([top, os.path.realpath(target)]) != top:
            raise UserError(f"{name}: would be written outside {dest} (a symlink there points elsewhere)")
    return target


def export(config: ExportConfig) -> int:
    """Write the masks and the index; returns how many masks were written."""
    configure_storage(StorageOptions(config.s3_endpoint_url, config.anonymous))
    with storage_errors(config.output):
        con = connect(config.output)
        check_run(con, config.run, config.output)
        select_scope(con, config.run)
        rows = con.sql(
            "SELECT run_id, image_id, image_uri FROM scope_images WHERE status = 'ok' ORDER BY image_uri"
        ).fetchall()
    root = strip_scheme(config.relative_to) if config.relative_to else common_folder([u for _, _, u in rows])
    names = mask_names([(image_id, uri) for _, image_id, uri in rows], root)
    with storage_errors(config.dest):  # the masks are read as they are written: a failure here is mostly the dest's
        written = write_masks(config, rows, names)
    if written != len(rows):
        raise RuntimeError(f"wrote {written} masks for {len(rows)} ok images; the index is not written")
    index = io.StringIO()
    writer = csv.writer(index)
    writer.writerow(["image_uri", "mask_path"])
    writer.writerows((uri, names[image_id]) for _, image_id, uri in rows)
    with storage_errors(config.dest):
        write_bytes(join(config.dest, INDEX_NAME), index.getvalue().encode("utf-8"))
    return len(rows)


def write_masks(config: ExportConfig, rows: list[tuple[str, str, str]], names: dict[str, str]) -> int:
    """Write the masks of the (run_id, image_id, image_uri) rows; returns how many were written.

    The scope's rows hold no mask bytes: each run involved streams its own ok masks, a few hundred
    at a time, and only those in scope are kept, so memory stays bounded whatever the run's size."""
    wanted: dict[str, set[str]] = {}
    for run_id, image_id, _ in rows:
        wanted.setdefault(run_id, set()).add(image_id)
    images = committed_dataset(config.output, "images")
    written = 0
    for run_id, image_ids in sorted(wanted.items()):
        for image_id, mask_png in _ok_masks(images, run_id):
            if image_id in image_ids:
                write_bytes(checked_target(config.dest, names[image_id]), mask_png)
                written += 1
    return written


def _ok_masks(images: pads.Dataset, run_id: str) -> Iterator[tuple[str, bytes]]:
    """(image_id, mask PNG) of a run's ok rows, read only from its partition, with little read-ahead
    (pyarrow's default keeps dozens of batches in flight, which for large masks can be gigabytes)."""
    batches = images.to_batches(
        columns=["image_id", "mask_png"],
        filter=(pc.field("run_id") == run_id) & (scan_field("status") == "ok"),
        batch_size=MASK_BATCH_ROWS,
        batch_readahead=2,
        fragment_readahead=2,
    )
    for batch in batches:
        yield from zip(batch.column("image_id").to_pylist(), batch.column("mask_png").to_pylist())


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(data)
