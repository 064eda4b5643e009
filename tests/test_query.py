"""query.py against real runs of the segment job, checked against figures computed from the Parquet files."""
import csv
import io
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import TINY_CLASSES
from run_output import current_rows, make_output, read_run
from test_segment_job import run_job

from jobs.query import FORMATS, main, parse_args, run_query, write_result


@pytest.fixture(scope="module")
def output(tmp_path_factory, tiny_artifact) -> str:
    return make_output(str(tmp_path_factory.getbasetemp() / "segmented"), tiny_artifact)["output"]


def query_json(output: str, *args: str) -> list[dict]:
    out = io.BytesIO()
    write_result(run_query(parse_args(["--output", output, *args])), "json", out)
    return json.loads(out.getvalue())


def test_runs_lists_committed_runs_with_their_manifest_figures(output):
    rows = query_json(output, "runs")
    assert [row["run_id"] for row in rows] == ["first", "second"]  # "ghost" has parts but no manifest
    for row in rows:
        manifest = json.load(open(os.path.join(output, "runs", f"{row['run_id']}.json")))
        assert (row["inputs"], row["ok"], row["errors"]) == tuple(manifest["counts"][k] for k in ("inputs", "ok", "errors"))
        assert row["model_name"] == "tiny" and manifest["model"]["sha256"].startswith(row["model_sha256"])
        assert row["wall_seconds"] == manifest["wall_seconds"] > 0
    assert (rows[0]["inputs"], rows[0]["errors"]) == (8, 2)
    assert (rows[1]["inputs"], rows[1]["errors"]) == (3, 0)


@pytest.mark.parametrize("run", ["first", "second", None])
def test_summary_matches_the_class_stats_files(output, run):
    stats = current_rows(output, "class_stats") if run is None else read_run(output, "class_stats", run).to_pylist()
    total = sum(row["pixels"] for row in stats)
    rows = query_json(output, "summary", *(["--run", run] if run else []))
    assert [row["class_name"] for row in rows] == TINY_CLASSES
    for row in rows:
        mine = [s for s in stats if s["class_name"] == row["class_name"]]
        assert row["pixels"] == sum(s["pixels"] for s in mine)
        assert row["share"] == pytest.approx(row["pixels"] / total)
        assert row["images"] == sum(1 for s in mine if s["pixels"] > 0)
    assert sum(row["share"] for row in rows) == pytest.approx(1.0)
    images = {s["image_id"] for s in stats}
    assert len(images) == {"first": 6, "second": 3, None: 7}[run]  # current: a/ from "first", b/ from "second"


def test_find_returns_exactly_the_images_above_the_fraction(output):
    stats = current_rows(output, "class_stats")
    fractions = sorted(s["fraction"] for s in stats if s["class_name"] == "thing")
    threshold = fractions[len(fractions) // 2]
    expected = sorted(((s["fraction"], s["image_uri"]) for s in stats
                       if s["class_name"] == "thing" and s["fraction"] >= threshold), key=lambda p: (-p[0], p[1]))
    rows = query_json(output, "find", "--class", "thing", "--min-fraction", repr(threshold))
    assert [(row["fraction"], row["image_uri"]) for row in rows] == expected
    assert len(expected) >= 2
    limited = query_json(output, "find", "--class", "thing", "--min-fraction", repr(threshold), "--limit", "1")
    assert [row["image_uri"] for row in limited] == [expected[0][1]]
    assert query_json(output, "find", "--class", "stuff", "--min-fraction", "1") == []


def test_errors_follow_the_latest_committed_run(output):
    first = query_json(output, "errors", "--run", "first")
    expected = {row["image_uri"]: row["error"] for row in read_run(output, "images", "first").to_pylist()
                if row["status"] == "error"}
    assert {row["image_uri"]: row["error"] for row in first} == expected
    assert sorted(os.path.basename(uri) for uri in expected) == ["empty.png", "fixme.png"]
    assert any("empty file" in reason for reason in expected.values())
    current = query_json(output, "errors")  # fixme.png was repaired and redone by run "second"
    assert [os.path.basename(row["image_uri"]) for row in current] == ["empty.png"]
    assert query_json(output, "errors", "--run", "second") == []


def test_sql_sees_committed_rows_and_current_views(output):
    rows = query_json(output, "sql", "SELECT run_id, status, count(*)::INT AS n FROM images GROUP BY ALL ORDER BY ALL")
    counted = {}
    for run in ("first", "second"):
        for row in read_run(output, "images", run).to_pylist():
            counted[(run, row["status"])] = counted.get((run, row["status"]), 0) + 1
    assert {(r["run_id"], r["status"]): r["n"] for r in rows} == counted
    current = query_json(output, "sql", "SELECT run_id, count(*)::INT AS n FROM current_images GROUP BY ALL ORDER BY ALL")
    assert current == [{"run_id": "first", "n": 5}, {"run_id": "second", "n": 3}]
    joined = query_json(output, "sql", "SELECT sum(c.pixels)::BIGINT AS pixels, sum(i.width * i.height)::BIGINT AS area "
                                      "FROM current_class_stats c JOIN current_images i USING (image_id) "
                                      "WHERE c.class_id = 0")
    assert joined[0]["pixels"] <= joined[0]["area"] == sum(r["width"] * r["height"] for r in current_rows(output, "images")
                                                           if r["status"] == "ok")


def test_every_format_holds_the_same_rows(output, tmp_path):
    args = ["--output", output, "find", "--class", "background", "--min-fraction", "0"]
    reference = query_json(output, *args[2:])
    assert {fmt for fmt in FORMATS} == {"table", "csv", "json", "parquet"}
    main([*args, "--format", "parquet", "--to", str(tmp_path / "r.parquet")])
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == reference
    main([*args, "--format", "csv", "--to", str(tmp_path / "r.csv")])
    parsed = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [(r["image_uri"], float(r["fraction"])) for r in parsed] == [(r["image_uri"], r["fraction"]) for r in reference]
    main([*args, "--to", str(tmp_path / "r.txt")])
    lines = open(tmp_path / "r.txt").read().splitlines()
    assert lines[0].split() == ["image_uri", "fraction", "pixels", "mean_confidence", "run_id", "image_id"]
    gaps = [i for i, ch in enumerate(lines[1]) if ch == " "]  # the dashes under each header mark its column
    assert len(gaps) == 2 * 5 and all(line[i] == " " for line in lines[2:-1] for i in gaps)
    assert lines[-1] == f"({len(reference)} rows)"


def test_the_cli_prints_a_table_and_one_line_errors(output):
    done = run_job("query.py", "summary", "--output", output, "--run", "first", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0].split() == ["class_id", "class_name", "pixels", "share", "images", "image_share"]
    assert [line.split()[1] for line in done.stdout.splitlines()[2:5]] == TINY_CLASSES
    for args, message in [
        (["find", "--class", "tree", "--min-fraction", "0.1"], "--class 'tree': no such class; classes are background"),
        (["errors", "--run", "ghost"], "--run ghost: no committed run of that name"),
        (["sql", "SELECT nope FROM images"], "query failed: Binder Error"),
    ]:
        failed = run_job("query.py", "--output", output, *args, timeout=120)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr[-2000:]
        assert "Traceback" not in failed.stderr and failed.stderr.count("error:") == 1


def copy_output(output: str, target) -> str:
    shutil.copytree(output, target)
    return str(target)


def test_with_one_committed_run_current_rows_are_that_run(output, tmp_path):
    single = copy_output(output, tmp_path / "single")
    os.remove(os.path.join(single, "runs", "second.json"))  # now "second" is as good as never committed
    assert query_json(single, "summary") == query_json(output, "summary", "--run", "first")
    rows = query_json(single, "sql", "SELECT run_id, count(*)::INT AS n FROM current_images GROUP BY ALL")
    assert rows == [{"run_id": "first", "n": 8}]


def test_find_by_name_where_runs_number_the_class_differently(output, tmp_path):
    renumbered = copy_output(output, tmp_path / "renumbered")
    path = os.path.join(renumbered, "runs", "second.json")
    manifest = json.load(open(path))
    manifest["model"]["class_names"] = list(reversed(manifest["model"]["class_names"]))
    json.dump(manifest, open(path, "w"))
    args = ("find", "--class", "stuff", "--min-fraction", "0.05")
    assert query_json(renumbered, *args) == query_json(output, *args) != []
