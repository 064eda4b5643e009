"""Planning a run without holding it: the listing streamed through hash partitions on scratch disk,
the `--incremental` selection joined a partition at a time, and the plan's shards read back in pieces.
The partitioned path must choose exactly what one partition chooses."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from jobs.output import incremental, plans
from jobs.output.incremental import Selection, partitioned, selected
from jobs.output.plans import Plan, blocks, load_plan, make_plan, read_blocks, remaining
from jobs.output.tables import SCHEMAS, delta_uri, ensure_tables
from jobs.storage.listing import LISTING_SCHEMA

MODEL = "ab" * 32
WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def listing_chunks(count: int, chunk: int) -> list[pa.Table]:
    """`count` images in chunks, then images 0..9 named again with a new size and version (last named wins)."""
    rows = [(f"s3://b/img-{i:05d}.png", 100 + i, f"v{i}") for i in range(count)]
    rows += [(f"s3://b/img-{i:05d}.png", 900 + i, f"w{i}") for i in range(10)]
    tables = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        tables.append(
            pa.table(
                [
                    pa.array([r[0] for r in part]),
                    pa.array([r[1] for r in part], pa.int64()),
                    pa.array([r[2] for r in part]),
                    pa.array([WHEN] * len(part), LISTING_SCHEMA[3].type),
                ],
                schema=LISTING_SCHEMA,
            )
        )
    return tables


def write_current(output: str, rows: list[dict]) -> None:
    """A real `current` Delta table holding these rows (the rest of each row null)."""
    ensure_tables(output)
    schema = SCHEMAS["current"]
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    write_deltalake(delta_uri(output, "current"), table, mode="append")


def earlier(
    uri_index: int, size: int, version: str, model: str = MODEL, status: str = "ok", error_kind: str | None = None
) -> dict:
    return {
        "image_id": f"id{uri_index}",
        "image_uri": f"s3://b/img-{uri_index:05d}.png",
        "source_size": size,
        "source_version": version,
        "status": status,
        "error_kind": error_kind,
        "model_sha256": model,
        "run_id": "night-1",
    }


def plan_of(chunks: list[pa.Table], output: str, selection: Selection | None, scratch) -> tuple[int, list[dict]]:
    scratch.mkdir()
    picked = list(selected(partitioned(iter(chunks), str(scratch)), output, selection, str(scratch)))
    return sum(listed for listed, _ in picked), [row for _, todo in picked for row in todo.to_pylist()]


@pytest.fixture
def small_partitions(monkeypatch):
    """Batches of 7 rows cut into 5 partitions, selected 3 rows a pass: the path of a listing of
    millions, at test size."""
    monkeypatch.setattr(incremental, "BATCH_ROWS", 7)
    monkeypatch.setattr(incremental, "PARTITIONS", 5)
    monkeypatch.setattr(incremental, "PASS_ROWS", 3)


def test_a_long_listing_is_partitioned_and_plans_what_one_partition_plans(tmp_path, monkeypatch):
    chunks = listing_chunks(60, 4)
    listed, whole = plan_of(chunks, str(tmp_path / "out"), None, tmp_path / "one")
    assert listed == 60 and len(whole) == 60
    renamed = {row["image_uri"]: row for row in whole if row["source_version"].startswith("w")}
    assert sorted(renamed) == [f"s3://b/img-{i:05d}.png" for i in range(10)]  # as last named
    assert all(row["source_size"] == 900 + int(uri[-9:-4]) for uri, row in renamed.items())
    monkeypatch.setattr(incremental, "BATCH_ROWS", 7)
    monkeypatch.setattr(incremental, "PARTITIONS", 5)
    monkeypatch.setattr(incremental, "PASS_ROWS", 4)
    picked = list(selected(partitioned(iter(chunks), str(tmp_path)), str(tmp_path / "out"), None, str(tmp_path)))
    assert len(picked) > 5  # every partition, in several passes
    assert sum(listed for listed, _ in picked) == 60
    assert sorted(row["image_uri"] for _, todo in picked for row in todo.to_pylist()) == sorted(
        row["image_uri"] for row in whole
    )
    assert {tuple(row.values()) for _, todo in picked for row in todo.to_pylist()} == {
        tuple(row.values()) for row in whole
    }


@pytest.mark.parametrize("path", ["partitioned", "one partition"])
def test_the_selection_skips_exactly_the_done_versions(tmp_path, monkeypatch, path):
    """Both paths: the listing of millions (both sides spilled into partitions) and the small night
    (one partition, which meets `current` directly)."""
    if path == "partitioned":
        monkeypatch.setattr(incremental, "BATCH_ROWS", 7)
        monkeypatch.setattr(incremental, "PARTITIONS", 5)
        monkeypatch.setattr(incremental, "PASS_ROWS", 3)
    output = str(tmp_path / "out")
    write_current(
        output,
        [
            earlier(20, 120, "v20"),  # done: this version, this model
            earlier(21, 121, "v21", status="error", error_kind="invalid"),  # done: the file is bad
            earlier(22, 122, "v22", status="error", error_kind="transient"),  # retried: the store failed
            earlier(23, 123, "v23", model="cd" * 32),  # another model
            earlier(24, 124, "old"),  # an earlier version of the file
            earlier(3, 103, "v3"),  # renamed since: listed last as w3
        ],
    )
    listed, todo = plan_of(listing_chunks(30, 4), output, Selection(MODEL, retry_errors=False), tmp_path / "s")
    skipped = {f"s3://b/img-{i:05d}.png" for i in (20, 21)}
    assert (
        listed == 30 and {row["image_uri"] for row in todo} == {f"s3://b/img-{i:05d}.png" for i in range(30)} - skipped
    )
    _, retried = plan_of(listing_chunks(30, 4), output, Selection(MODEL, retry_errors=True), tmp_path / "r")
    assert len(retried) == 29  # every error is done again; only the ok row of this version is skipped


def test_the_plan_is_written_in_shards_and_read_back_in_pieces(tmp_path, small_partitions, monkeypatch):
    monkeypatch.setattr(plans, "SHARD_ROWS", 16)
    monkeypatch.setattr(plans, "ROW_GROUP_ROWS", (6, 6))
    output = str(tmp_path / "out")
    header = Plan(
        "night",
        inputs=0,
        skipped=0,
        planned=0,
        listed_at="2026-01-01T00:00:00+00:00",
        model_sha256=MODEL,
        sources=["list"],
        shards=0,
    )
    plan = make_plan(output, header, iter(listing_chunks(40, 8)), None)
    assert (plan.inputs, plan.planned, plan.shards) == (40, 40, 3) and load_plan(output, "night") == plan
    todo = remaining(output, plan, [])
    pieces = blocks(todo, 4)
    assert max(pieces.column("rows").to_pylist()) <= 4
    rows = read_blocks(pieces).to_pylist()
    assert len(rows) == 40 and len({row["image_uri"] for row in rows}) == 40
    kept = [str(tmp_path / f"kept-{i}.parquet") for i in range(2)]  # the images files of two kept parts
    for index, path in enumerate(kept):
        pq.write_table(
            pa.table({"image_uri": [row["image_uri"] for row in rows[index * 12 : (index + 1) * 12 + 1]]}), path
        )
    left = remaining(output, plan, kept)
    assert left.rows == 15
    assert sorted(r["image_uri"] for r in read_blocks(blocks(left, 4)).to_pylist()) == sorted(
        row["image_uri"] for row in rows[25:]
    )


def test_a_resume_keeps_whole_parts_once_and_selects_what_none_holds(tmp_path):
    """The resume's side of a plan: whole parts are kept (a cut-short file is not), a part repeating
    an image of a part of an earlier name is skipped (an attempt that stalled, was taken over and
    woke up to write one more), and the todo is the plan less what the kept parts hold, found by a
    join that spills rather than holding the kept URIs."""
    from jobs.output.parts import kept_files, kept_parts, part_folder, write_part

    output = str(tmp_path / "out")
    plan = make_plan(
        output,
        Plan(
            "resumed",
            inputs=0,
            skipped=0,
            planned=0,
            listed_at=WHEN.isoformat(),
            model_sha256=MODEL,
            sources=["list"],
            shards=0,
        ),
        iter(listing_chunks(40, 8)),
        None,
    )
    uris = [f"s3://b/img-{i:05d}.png" for i in range(40)]

    def part(first: int, last: int) -> str:
        images = pa.table({"image_uri": uris[first:last]})
        return write_part(output, "resumed", images, pa.table({"image_uri": uris[first:last]}), {"ok": last - first})[
            "part"
        ]

    written = [part(0, 10), part(5, 15), part(20, 30)]
    folder = part_folder(output, "images", "resumed")
    with open(f"{folder}/part-{'f' * 32}.parquet", "wb") as cut:
        cut.write(b"PAR1 cut short")
    kept = kept_parts(output, "resumed")
    overlapping = sorted(written[:2])[1]  # of the two parts sharing images 5..9, the later name goes
    assert sorted(row["part"] for row in kept) == sorted(set(written) - {overlapping})
    held = {uri for row in kept for uri in pq.read_table(f"{folder}/{row['part']}").column("image_uri").to_pylist()}
    todo = remaining(output, plan, kept_files(output, "resumed", kept))
    assert todo.rows == 40 - len(held)
    assert {row["image_uri"] for row in read_blocks(blocks(todo, 8)).to_pylist()} == set(uris) - held
