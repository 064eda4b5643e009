"""Listing inputs: one URI and one version per file however it is named, list files with size and version
columns, and `--incremental` runs of the real job on both."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import png_bytes
from delta_read import delta_sql
from PIL import Image
from test_segment_job import run_job

from jobs.common.errors import UserError
from jobs.storage.listing import canonical_uri, list_inputs

NAMES = ("a.png", "b.png", "sub/c.png")


def photos(root: Path) -> Path:
    """Three tiny PNGs under root/photos (one in a subfolder)."""
    rng = np.random.default_rng(4)
    for index, name in enumerate(NAMES):
        path = root / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(Image.fromarray(rng.integers(0, 255, (12 + index, 10, 3), dtype=np.uint8))))
    return root / "photos"


def find_list(folder: Path) -> str:
    """A header, then what `find . -type f -printf '%P,%s,%T@\\n'` writes in `folder` (GNU find: 10 decimals)."""
    lines = ["path,size,mtime"]
    for name in NAMES:
        found = os.stat(folder / name)
        seconds, nanoseconds = divmod(found.st_mtime_ns, 10**9)
        lines.append(f"{name},{found.st_size},{seconds}.{nanoseconds:09d}0")
    return "\n".join(lines) + "\n"


def rows(listing: pa.Table) -> list[dict]:
    return sorted(listing.to_pylist(), key=lambda row: row["image_uri"])


def test_a_file_has_one_uri_and_version_however_it_is_named(tmp_path, monkeypatch):
    root = tmp_path.resolve()
    folder = photos(root)
    monkeypatch.chdir(root)
    (folder / "listing.csv").write_text(find_list(folder))  # paths relative to the list file's folder
    spellings = {
        "folder": ["photos"],
        "folder, other spellings": [f"file://{folder}/", "./photos//", "photos/sub/.."],
        "globs": ["photos/*.png", f"{root}/photos/./sub/*.png"],
        "single paths": [str(folder / "a.png"), f"file://{folder}/b.png", "photos/sub/../sub/c.png"],
        "list file with relative paths, sizes and find's mtimes": ["photos/listing.csv"],
    }
    expected = rows(list_inputs(spellings.pop("folder")))
    assert [row["image_uri"] for row in expected] == [str(folder / name) for name in NAMES]
    assert all(row["source_size"] > 0 and row["source_version"] for row in expected)
    for spelling, specs in spellings.items():
        assert rows(list_inputs(specs)) == expected, spelling

    lists = root / "lists"
    lists.mkdir()
    (lists / "relative.txt").write_text(
        "# relative to this file's folder\n../photos/a.png\n\n  ../photos/./b.png  \n../photos/sub/../sub/c.png\n"
    )
    plain = rows(list_inputs([str(lists / "relative.txt")]))
    assert [row["image_uri"] for row in plain] == [row["image_uri"] for row in expected]
    assert {(row["source_size"], row["source_version"], row["source_modified"]) for row in plain} == {(-1, "", None)}


def test_an_s3_object_has_one_uri_and_version_however_it_is_named(s3_server, s3_bucket, tmp_path, monkeypatch):
    import fsspec

    from jobs.storage.settings import configure_storage, StorageOptions

    for key, value in s3_server.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("FSSPEC_S3", "")  # restored (removed) after the test, as is fsspec's config below
    monkeypatch.setitem(fsspec.config.conf, "s3", {})
    configure_storage(StorageOptions(endpoint_url=s3_server.endpoint))
    fs, folder = s3_server.filesystem(), photos(tmp_path)
    for name in NAMES:
        fs.put_file(str(folder / name), f"{s3_bucket}/photos/{name}")
    etags = {name: fs.info(f"{s3_bucket}/photos/{name}")["ETag"].strip('"') for name in NAMES}
    fs.pipe_file(
        f"{s3_bucket}/lists/night.csv",
        (
            "uri,size,etag\n"
            + "".join(f"../photos/{name},{os.path.getsize(folder / name)},{etags[name]}\n" for name in NAMES)
        ).encode(),
    )
    prefix = f"s3://{s3_bucket}/photos"
    expected = rows(list_inputs([f"{prefix}/"]))
    assert [row["image_uri"] for row in expected] == [f"{prefix}/{name}" for name in NAMES]
    assert [row["source_version"] for row in expected] == [etags[name] for name in NAMES]
    for specs in (
        [f"s3a://{s3_bucket}/photos"],
        [f"{prefix}/*.png", f"S3://{s3_bucket}/photos/sub/*.png"],
        [f"{prefix}/{name}" for name in NAMES],
    ):
        assert rows(list_inputs(specs)) == expected, specs
    listed = rows(list_inputs([f"s3://{s3_bucket}/lists/night.csv"]))  # relative to the list file's folder
    assert [{k: row[k] for k in ("image_uri", "source_size", "source_version")} for row in listed] == [
        {k: row[k] for k in ("image_uri", "source_size", "source_version")} for row in expected
    ]


@pytest.mark.parametrize(
    "spelling, base, canonical",
    [
        ("s3://bucket/photos/x.png", None, "s3://bucket/photos/x.png"),
        ("s3a://bucket/photos/x.png", None, "s3://bucket/photos/x.png"),
        ("S3://bucket/photos/x.png", None, "s3://bucket/photos/x.png"),
        ("s3://bucket/photos//x.png", None, "s3://bucket/photos//x.png"),  # in S3 a key of its own
        ("file:///data/./photos/../photos//x.png", None, "/data/photos/x.png"),
        ("/data/photos/", None, "/data/photos"),
        ("../x.png", "s3://bucket/lists/night", "s3://bucket/lists/x.png"),
        ("../../../x.png", "s3://bucket/lists", "s3://bucket/x.png"),
        ("./x.png", "/data/lists", "/data/lists/x.png"),
        ("s3a://other/x.png", "/data/lists", "s3://other/x.png"),
    ],
)
def test_canonical_uris(spelling, base, canonical):
    assert canonical_uri(spelling, base) == canonical


def test_list_file_columns_are_taken_as_given_and_never_looked_up(tmp_path):
    modified = dt.datetime(2026, 3, 1, 12, 34, 56, 789000, tzinfo=dt.timezone.utc)
    inventory = tmp_path / "inventory.parquet"
    pq.write_table(
        pa.table(
            {
                "image_uri": ["s3://no-such-bucket/a.jpg", "s3a://no-such-bucket/b.jpg", "s3://no-such-bucket/c.jpg"],
                "size": pa.array([10, None, 30], pa.int32()),
                "etag": ['"0cc175b9c0f1b6a831c399e269772661"', "", None],
                "last_modified": pa.array([modified, modified, None], pa.timestamp("ms", "UTC")),
                "other": [1, 2, 3],
            }
        ),
        inventory,
    )
    nanoseconds = str(int(modified.timestamp()) * 10**9 + 789_000_000)
    assert [tuple(row.values()) for row in rows(list_inputs([str(inventory)]))] == [
        ("s3://no-such-bucket/a.jpg", 10, "0cc175b9c0f1b6a831c399e269772661", modified),
        ("s3://no-such-bucket/b.jpg", -1, nanoseconds, modified),  # no ETag: the version is the mtime in ns
        ("s3://no-such-bucket/c.jpg", 30, "", None),
    ]
    (tmp_path / "zoned.csv").write_text("uri,last_modified\n/data/x.png,2026-03-01T13:34:56.789+01:00\n")
    (tmp_path / "utc.csv").write_text("uri,last_modified\n/data/x.png,2026-03-01 12:34:56.789\n")  # no zone: UTC
    (tmp_path / "epoch.csv").write_text(f"uri,mtime\n/data/x.png,{int(modified.timestamp())}.789\n")
    for name in ("zoned.csv", "utc.csv", "epoch.csv"):
        assert list_inputs([str(tmp_path / name)]).to_pylist() == [
            {"image_uri": "/data/x.png", "source_size": -1, "source_version": nanoseconds, "source_modified": modified}
        ]


def test_a_file_named_twice_is_one_row_as_last_named(tmp_path):
    folder = photos(tmp_path)
    (tmp_path / "list.csv").write_text(f"path,size,version\n{folder / 'a.png'},5,v7\n")
    walked = {row["image_uri"]: row for row in list_inputs([str(folder)]).to_pylist()}
    last = {row["image_uri"]: row for row in list_inputs([str(folder), str(tmp_path / "list.csv")]).to_pylist()}
    first = {row["image_uri"]: row for row in list_inputs([str(tmp_path / "list.csv"), str(folder)]).to_pylist()}
    assert sorted(last) == sorted(first) == sorted(walked)
    assert (last[str(folder / "a.png")]["source_size"], last[str(folder / "a.png")]["source_version"]) == (5, "v7")
    assert first == walked


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "list.csv",
            "name,size\na.png,1\n",
            "list.csv: a csv list file needs an image_uri, uri or path column (its columns: name, size)",
        ),
        ("list.csv", "path,size\na.png,12kB\n", "list.csv: column size: not a whole number of bytes (Failed to parse"),
        ("list.csv", "path,size\na.png,-4\n", "list.csv: column size: not a whole number of bytes (-4)"),
        ("list.csv", "path,mtime\na.png,yesterday\n", "list.csv: column mtime: not a time (Failed to parse"),
        ("list.parquet", "not parquet", "list.parquet: cannot read list file ("),
    ],
)
def test_bad_list_files_are_one_line_errors(tmp_path, monkeypatch, name, text, message):
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(text)
    with pytest.raises(UserError) as error:
        list_inputs([name])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.ray
def test_the_job_refuses_a_bad_list_file_with_one_line(tmp_path, tiny_artifact):
    (tmp_path / "list.csv").write_text("uri,size\na.png,big\n")
    done = run_job(
        "segment.py",
        "--input",
        str(tmp_path / "list.csv"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        tiny_artifact,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert ours == [
        f"error: {tmp_path / 'list.csv'}: column size: not a whole number of bytes "
        "(Failed to parse string: 'big' as a scalar of type int64)"
    ]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def incremental_run():
    """`segment.py --incremental` as a nightly scheduler runs it, in this process on one Ray for the module:
    the arguments go through the job's own parser, relative inputs are relative to the folder it runs in."""
    import ray

    from jobs.inference.run import segment
    from jobs.segment import parse_args

    environment, cwd = dict(os.environ), os.getcwd()

    def run(folder: Path, model: str, run_id: str, *inputs: str) -> tuple[int, int, int]:
        os.chdir(folder)
        try:
            config = parse_args(
                [
                    "--input",
                    *inputs,
                    "--output",
                    str(folder / "out"),
                    "--model",
                    model,
                    "--incremental",
                    "--run-id",
                    run_id,
                    "--actors",
                    "1",
                    "--cpus-per-actor",
                    "1",
                ]
            )[0]
            record = segment(config)
        finally:
            os.chdir(cwd)
        return record.inputs, record.skipped, record.processed

    try:
        yield run
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environment)


@pytest.mark.ray
def test_incremental_runs_know_an_image_however_it_is_named(tmp_path, tiny_artifact, incremental_run):
    folder = photos(tmp_path)
    (folder / "listing.csv").write_text(find_list(folder))
    assert incremental_run(tmp_path, tiny_artifact, "by-folder", "photos") == (3, 0, 3)
    for run_id, inputs in [
        ("by-glob", ["./photos/*.png", "photos/sub/*.png"]),
        ("by-list", ["photos/listing.csv"]),
        ("by-path", [f"file://{folder}/a.png", "photos//b.png", "photos/x/../sub/c.png"]),
    ]:
        assert incremental_run(tmp_path, tiny_artifact, run_id, *inputs) == (3, 3, 0), run_id


@pytest.mark.ray
def test_incremental_run_redoes_exactly_the_image_whose_listed_version_changed(
    tmp_path, tiny_artifact, incremental_run
):
    folder = photos(tmp_path)
    uris = [f"photos/{name}" for name in NAMES]  # relative to the list file's folder
    sizes = [os.path.getsize(folder / name) for name in NAMES]

    def write_list(versions: list[str]) -> None:
        pq.write_table(pa.table({"image_uri": uris, "size": sizes, "version": versions}), tmp_path / "list.parquet")

    write_list(["v1", "v1", "v1"])
    assert incremental_run(tmp_path, tiny_artifact, "night-1", "list.parquet") == (3, 0, 3)
    write_list(["v1", "v2", "v1"])  # b.png's listed version changed; the file itself is untouched
    assert incremental_run(tmp_path, tiny_artifact, "night-2", "list.parquet") == (3, 2, 1)
    assert incremental_run(tmp_path, tiny_artifact, "night-3", "list.parquet") == (3, 3, 0)
    redone = delta_sql(
        str(tmp_path / "out"), "SELECT image_uri, source_size, source_version FROM images WHERE run_id = 'night-2'"
    ).to_pylist()
    assert redone == [{"image_uri": str(folder / "b.png"), "source_size": sizes[1], "source_version": "v2"}]


@pytest.mark.ray
def test_an_image_listed_without_a_version_is_processed_every_run(tmp_path, tiny_artifact, incremental_run):
    """Nothing in a plain list tells that a file was replaced, so no run may skip it (issue case 6)."""
    folder = photos(tmp_path)
    (tmp_path / "list.txt").write_text("".join(f"photos/{name}\n" for name in NAMES))
    assert incremental_run(tmp_path, tiny_artifact, "plain-1", "list.txt") == (3, 0, 3)
    (folder / "a.png").write_bytes(png_bytes(Image.new("RGB", (40, 40))))  # replaced, and nothing says so
    assert incremental_run(tmp_path, tiny_artifact, "plain-2", "list.txt") == (3, 0, 3)
    current = delta_sql(
        str(tmp_path / "out"), f"SELECT width, height, run_id FROM current WHERE image_uri = '{folder / 'a.png'}'"
    ).to_pylist()
    assert current == [{"width": 40, "height": 40, "run_id": "plain-2"}]
