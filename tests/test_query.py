"""query.py against real runs of the segment job, checked against figures read from the tables by deltalake."""

import csv
import io
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import TINY_CLASSES
from delta_read import delta_sql
from run_output import current_rows, make_output, read_run
from test_segment_job import run_job

from jobs.query import main, parse_args
from jobs.results.query import FORMATS, run_query, write_result

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_artifact) -> dict[str, str]:
    return make_output(str(tmp_path_factory.getbasetemp() / "segmented"), tiny_artifact)


@pytest.fixture(scope="module")
def output(paths) -> str:
    return paths["output"]


def query_json(output: str, *args: str) -> list[dict]:
    out = io.BytesIO()
    write_result(run_query(parse_args(["--output", output, "--format", "json", *args])), "json", out)
    return json.loads(out.getvalue())


def test_runs_lists_committed_runs_with_their_recorded_figures(output):
    rows = query_json(output, "runs")
    assert [row["run_id"] for row in rows] == ["first", "second"]  # "ghost" has parts but no commit
    recorded = {row["run_id"]: row for row in delta_sql(output, "SELECT * FROM runs").to_pylist()}
    for row in rows:
        run = recorded[row["run_id"]]
        counts = ("inputs", "skipped", "ok", "errors")
        assert [row[k] for k in counts] == [run[k] for k in counts]
        assert row["model_name"] == "tiny" and row["model_sha256"] == run["model_sha256"]  # whole, for machines
        assert len(row["model_sha256"]) == 64
        assert row["wall_seconds"] == run["wall_seconds"] > 0
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
    expected = sorted(
        ((s["fraction"], s["image_uri"]) for s in stats if s["class_name"] == "thing" and s["fraction"] >= threshold),
        key=lambda p: (-p[0], p[1]),
    )
    rows = query_json(output, "find", "--class", "thing", "--min-fraction", repr(threshold))
    assert [(row["fraction"], row["image_uri"]) for row in rows] == expected
    assert len(expected) >= 2
    limited = query_json(output, "find", "--class", "thing", "--min-fraction", repr(threshold), "--limit", "1")
    assert [row["image_uri"] for row in limited] == [expected[0][1]]
    assert query_json(output, "find", "--class", "stuff", "--min-fraction", "1") == []


def test_errors_follow_the_latest_committed_run(output):
    first = query_json(output, "errors", "--run", "first")
    expected = {
        row["image_uri"]: row["error"]
        for row in read_run(output, "images", "first").to_pylist()
        if row["status"] == "error"
    }
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
    current = query_json(
        output, "sql", "SELECT run_id, count(*)::INT AS n FROM current_images GROUP BY ALL ORDER BY ALL"
    )
    assert current == [{"run_id": "first", "n": 5}, {"run_id": "second", "n": 3}]
    joined = query_json(
        output,
        "sql",
        "SELECT sum(c.pixels)::BIGINT AS pixels, sum(i.width * i.height)::BIGINT AS area "
        "FROM current_class_stats c JOIN current_images i USING (image_id) "
        "WHERE c.class_id = 0",
    )
    assert (
        joined[0]["pixels"]
        <= joined[0]["area"]
        == sum(r["width"] * r["height"] for r in current_rows(output, "images") if r["status"] == "ok")
    )


def test_every_format_holds_the_same_rows(output, tmp_path):
    args = ["--output", output, "find", "--class", "background", "--min-fraction", "0"]
    reference = query_json(output, *args[2:])
    assert {fmt for fmt in FORMATS} == {"table", "csv", "json", "parquet"}
    main([*args, "--format", "parquet", "--to", str(tmp_path / "r.parquet")])
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == reference
    main([*args, "--format", "csv", "--to", str(tmp_path / "r.csv")])
    parsed = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [(r["image_uri"], float(r["fraction"])) for r in parsed] == [
        (r["image_uri"], r["fraction"]) for r in reference
    ]
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
    for args, message, flag in [
        (
            ["find", "--class", "tree", "--min-fraction", "0.1"],
            "class 'tree': no such class; classes are background",
            " (--class)",
        ),
        (["errors", "--run", "ghost"], "run ghost: no committed run of that name", " (--run)"),
        (["sql", "SELECT nope FROM images"], "query failed: Binder Error", ""),
    ]:
        failed = run_job("query.py", "--output", output, *args, timeout=120)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr[-2000:]
        assert failed.stderr.strip().endswith(flag)  # the library's facts, and the flag they are about
        assert "Traceback" not in failed.stderr and failed.stderr.count("error:") == 1


def copy_output(output: str, target) -> str:
    shutil.copytree(output, target)
    return str(target)


def segment(inputs: str, output: str, artifact: str, run_id: str) -> None:
    done = run_job(
        "segment.py",
        "--input",
        inputs,
        "--output",
        output,
        "--model",
        artifact,
        "--run-id",
        run_id,
        "--batch-size",
        "4",
        "--actors",
        "1",
        "--cpus-per-actor",
        "1",
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_with_one_committed_run_current_rows_are_that_run(paths, tmp_path, tiny_artifact):
    single = str(tmp_path / "single")
    segment(paths["scenes"], single, tiny_artifact, "only")
    assert query_json(single, "summary") == query_json(single, "summary", "--run", "only")
    assert sum(row["pixels"] for row in query_json(single, "summary")) == sum(
        row["pixels"] for row in read_run(single, "class_stats", "only").to_pylist()
    )
    rows = query_json(single, "sql", "SELECT run_id, count(*)::INT AS n FROM current_images GROUP BY ALL")
    assert rows == [{"run_id": "only", "n": 8}]


@pytest.fixture(scope="module")
def reversed_artifact(tmp_path_factory) -> str:
    """The tiny model's twin (same seed, same weights) whose class names run the other way: class 0 is "stuff"."""
    import keras

    from unet_core import build_unet, save_artifact

    keras.utils.set_random_seed(0)
    uri = str(tmp_path_factory.mktemp("reversed") / "tiny-reversed")
    save_artifact(
        build_unet(len(TINY_CLASSES), (32, 32, 3), base_filters=4), uri, TINY_CLASSES[::-1], name="tiny-reversed"
    )
    return uri


def test_find_by_name_where_runs_number_the_class_differently(paths, tmp_path, reversed_artifact):
    renumbered = copy_output(paths["output"], tmp_path / "renumbered")
    segment(os.path.join(paths["scenes"], "a"), renumbered, reversed_artifact, "third")
    ids = delta_sql(renumbered, "SELECT DISTINCT run_id, class_id FROM class_stats WHERE class_name = 'stuff'")
    assert sorted(zip(*ids.to_pydict().values())) == [("first", 2), ("second", 2), ("third", 0)]

    def expected(stats, threshold):
        return sorted(
            (
                (s["fraction"], s["image_uri"], s["run_id"])
                for s in stats
                if s["class_name"] == "stuff" and s["fraction"] >= threshold
            ),
            key=lambda p: (-p[0], p[1]),
        )

    for run in ("second", "third"):
        rows = query_json(renumbered, "find", "--run", run, "--class", "stuff", "--min-fraction", "0.05")
        stats = read_run(renumbered, "class_stats", run).to_pylist()
        assert [(r["fraction"], r["image_uri"], r["run_id"]) for r in rows] == expected(stats, 0.05)
    current = (
        read_run(renumbered, "class_stats", "second").to_pylist()  # b/ from "second", a/ redone by "third"
        + read_run(renumbered, "class_stats", "third").to_pylist()
    )
    rows = query_json(renumbered, "find", "--class", "stuff", "--min-fraction", "0")
    assert [(r["fraction"], r["image_uri"], r["run_id"]) for r in rows] == expected(current, 0)
    assert {r["run_id"] for r in rows} == {"second", "third"} and len(rows) == 7
    rows = query_json(renumbered, "find", "--class", "stuff", "--min-fraction", "0.05")
    assert [(r["fraction"], r["image_uri"], r["run_id"]) for r in rows] == expected(current, 0.05) != []
