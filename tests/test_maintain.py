"""Maintenance over a season of nightly runs, and the conversion of the earlier layout."""

import datetime as dt
import json
import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delta_read import delta_sql, delta_table, snapshot
from test_segment_job import run_job
from test_tables import backdate, make_images

pytestmark = pytest.mark.ray

TABLES = ("images", "class_stats", "current", "runs")


NIGHTS = 5
LAST, PLAIN = f"night-{NIGHTS - 1:02d}", f"night-{NIGHTS - 2:02d}"
"""The last night (it also redoes a changed image) and a night of two new images only."""


def test_a_season_of_nightly_runs_then_maintenance_drop_files_and_keep_every_row(tmp_path, tiny_artifact):
    import ray

    from jobs.inference.config import SegmentConfig
    from jobs.inference.run import segment
    from jobs.output.maintenance import MaintainConfig, maintain

    output, folder = str(tmp_path / "out"), tmp_path / "in"
    environment = dict(os.environ)
    try:  # one Ray for the whole season, as a long-lived scheduler process would keep
        for night in range(NIGHTS):
            make_images(folder, 2, start=2 * night)
            changed = night % 5 == 4
            if changed:  # an earlier image is replaced: a new version to redo
                make_images(folder, 1, start=night - 4, size=(20, 26))
            record = segment(
                SegmentConfig(
                    inputs=[str(folder)],
                    output=output,
                    model=tiny_artifact,
                    batch_size=2,
                    rows_per_file=1,
                    actors="1",
                    cpus_per_actor=1.0,
                    incremental=True,
                    run_id=f"night-{night:02d}",
                )
            )
            assert (record.processed, record.skipped) == (2 + changed, 2 * night - changed)
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environment)

    before = snapshot(output)
    files = {table: len(delta_table(output, table).file_uris()) for table in TABLES}
    backdate(output, hours=3)
    report = maintain(MaintainConfig(output, retention_hours=1))

    after = snapshot(output)
    assert {t: rows for t, (_, rows) in after.items()} == {t: rows for t, (_, rows) in before.items()}
    compacted = {table: len(delta_table(output, table).file_uris()) for table in TABLES}
    parts = 2 * NIGHTS + NIGHTS // 5  # a file per image (rows_per_file=1), a changed image every fifth night
    assert compacted["images"] == compacted["class_stats"] == NIGHTS < files["images"] == parts  # one file per run
    assert compacted["runs"] == 1 < files["runs"] == NIGHTS
    assert compacted["current"] <= files["current"]
    # the replaced small files stay on disk for readers of older versions until the retention passes
    assert report.retention.keep_hours == 1 and sum(removed for removed, _ in report.compacted.values()) > 3 * NIGHTS
    current = delta_sql(output, "SELECT count(*) AS n, count(DISTINCT image_uri) AS d FROM current").to_pylist()
    assert current == [{"n": 2 * NIGHTS, "d": 2 * NIGHTS}]
    readers_agree_after_compaction(output, folder, record.model_sha256)


def readers_agree_after_compaction(output: str, folder, model_sha256: str) -> None:
    """The files delta-rs rewrote (merge, compaction) read the same through the project's readers,
    text filters included."""
    from jobs.output.incremental import Selection, partitioned, selected
    from jobs.output.readers import connect, masks
    from jobs.storage.listing import iter_listing

    con = connect(output)
    ours = con.sql(
        "SELECT class_name, count(*) FROM current_class_stats WHERE class_name = 'background' "
        f"AND run_id = '{LAST}' GROUP BY class_name"
    ).fetchall()
    theirs = delta_sql(
        output,
        "SELECT count(*) AS n FROM class_stats c JOIN current k ON c.image_id = k.image_id "
        f"AND c.run_id = k.run_id WHERE c.class_name = 'background' AND c.run_id = '{LAST}'",
    )
    assert ours == [("background", theirs.column("n")[0].as_py())] and ours[0][1] > 0
    assert con.sql("SELECT count(*) FROM current_images WHERE status = 'ok'").fetchall() == [(2 * NIGHTS,)]
    with tempfile.TemporaryDirectory() as scratch:
        picked = list(
            selected(partitioned(iter_listing([str(folder)]), scratch), output, Selection(model_sha256, False), scratch)
        )
    assert [(listed, todo.num_rows) for listed, todo in picked] == [(2 * NIGHTS, 0)]  # every image done
    expected = delta_sql(output, f"SELECT run_id, image_id, mask_png FROM images WHERE run_id = '{PLAIN}'").to_pylist()
    found = masks(output, [(row["run_id"], row["image_id"]) for row in expected])
    assert found == {(row["run_id"], row["image_id"]): row["mask_png"] for row in expected} and len(found) == 2


OLD_IMAGES = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_uri", pa.string()),
        ("source_size", pa.int64()),
        ("source_version", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("mask_png", pa.binary()),
        ("model_name", pa.string()),
        ("model_sha256", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)
OLD_CLASS_STATS = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_uri", pa.string()),
        ("class_id", pa.int16()),
        ("class_name", pa.string()),
        ("pixels", pa.int64()),
        ("fraction", pa.float64()),
        ("mean_confidence", pa.float64()),
    ]
)


def write_legacy_root(output: str) -> None:
    """What the earlier layout left: one committed run's parts and its JSON manifest."""
    now = dt.datetime.now(dt.timezone.utc)
    images = pa.Table.from_pylist(
        [
            {
                "image_id": "aaa",
                "image_uri": "/data/a.png",
                "source_size": 10,
                "source_version": "1",
                "width": 2,
                "height": 2,
                "status": "ok",
                "error": None,
                "mask_png": b"png",
                "model_name": "m",
                "model_sha256": "s",
                "processed_at": now,
            },
            {
                "image_id": "bbb",
                "image_uri": "/data/b.png",
                "source_size": 5,
                "source_version": "2",
                "width": 0,
                "height": 0,
                "status": "error",
                "error": "truncated",
                "mask_png": None,
                "model_name": "m",
                "model_sha256": "s",
                "processed_at": now,
            },
        ],
        schema=OLD_IMAGES,
    )
    stats = pa.Table.from_pylist(
        [
            {
                "image_id": "aaa",
                "image_uri": "/data/a.png",
                "class_id": c,
                "class_name": n,
                "pixels": p,
                "fraction": p / 4,
                "mean_confidence": 0.5,
            }
            for c, n, p in ((0, "bg", 3), (1, "fg", 1))
        ],
        schema=OLD_CLASS_STATS,
    )
    for table, rows in (("images", images), ("class_stats", stats)):
        os.makedirs(os.path.join(output, table, "run_id=old"))
        pq.write_table(rows, os.path.join(output, table, "run_id=old", "part-0.parquet"))
    os.makedirs(os.path.join(output, "runs"))
    manifest = {
        "run_id": "old",
        "status": "committed",
        "committed_at": "2026-10-01T00:00:00+00:00",
        "started_at": "2026-10-01T00:00:00Z",
        "model": {"name": "m", "sha256": "s", "uri": "/m", "class_names": ["bg", "fg"]},
        "counts": {"inputs": 2, "skipped": 0, "processed": 2, "ok": 1, "errors": 1},
        "class_pixels": {"bg": 3, "fg": 1},
        "wall_seconds": 1.0,
        "images_per_second": 2.0,
        "files": {t: [f"{t}/run_id=old/part-0.parquet"] for t in ("images", "class_stats")},
    }
    with open(os.path.join(output, "runs", "old.json"), "w") as handle:
        json.dump(manifest, handle)


def test_the_earlier_layout_is_refused_with_the_way_out_and_converts(tmp_path):
    output = str(tmp_path / "old")
    write_legacy_root(output)
    refused = run_job("query.py", "--output", output, "runs")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"convert it with `python jobs/maintain.py --output {output} --convert-legacy`" in refused.stderr

    done = run_job("maintain.py", "--output", output, "--convert-legacy")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "converted run old" in done.stdout
    rows = {r["image_id"]: r for r in delta_sql(output, "SELECT * FROM images").to_pylist()}
    assert rows["aaa"]["classes"] == [
        {"class_id": 0, "class_name": "bg", "pixels": 3, "fraction": 0.75, "mean_confidence": 0.5},
        {"class_id": 1, "class_name": "fg", "pixels": 1, "fraction": 0.25, "mean_confidence": 0.5},
    ]
    assert rows["bbb"]["classes"] is None and rows["bbb"]["error"] == "truncated"
    assert rows["aaa"]["run_id"] == "old" and rows["aaa"]["source_modified"] is None
    run = delta_sql(output, "SELECT run_id, inputs, ok, errors, class_pixels FROM runs").to_pylist()
    assert run == [{"run_id": "old", "inputs": 2, "ok": 1, "errors": 1, "class_pixels": [3, 1]}]
    assert delta_sql(output, "SELECT count(*) AS n FROM class_stats").column("n")[0].as_py() == 2
    assert os.path.exists(os.path.join(output, "_legacy", "runs", "old.json"))
    assert run_job("query.py", "--output", output, "runs").returncode == 0
