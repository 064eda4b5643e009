"""query.py review and drift (issue 31) on real runs of the segment job, their figures checked against
the tables as deltalake reads them."""

import json
import shutil

import numpy as np
import pytest
from delta_read import delta_sql
from PIL import Image
from run_output import make_output
from test_query import copy_output, query_json, segment
from test_segment_job import run_job

from unet_core.quality import SIGNALS

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_artifact) -> dict[str, str]:
    return make_output(str(tmp_path_factory.getbasetemp() / "segmented"), tiny_artifact)


def score(row: dict) -> float:
    """The review score as docs/output.md states it."""
    flips = row["flip_disagreement"]
    parts = [row["uncertain_share"], row["entropy_mean"], 1 - row["confidence_mean"]] + (
        [flips] if flips is not None else []
    )
    return sum(parts) / len(parts)


def test_review_ranks_a_runs_images_by_the_documented_score(paths):
    images = delta_sql(paths["output"], "SELECT * FROM images WHERE run_id = 'first' AND status = 'ok'").to_pylist()
    expected = sorted(((score(r), r["image_uri"]) for r in images), key=lambda pair: (-pair[0], pair[1]))
    rows = query_json(paths["output"], "review", "--run", "first")
    assert [row["image_uri"] for row in rows] == [uri for _, uri in expected]
    assert [row["review_score"] for row in rows] == pytest.approx([value for value, _ in expected])
    assert len(rows) == 6  # the ok images; failed ones have no mask to review
    assert [row["image_uri"] for row in query_json(paths["output"], "review", "--run", "first", "--limit", "2")] == [
        uri for _, uri in expected[:2]
    ]
    having = {
        r["image_uri"]
        for r in delta_sql(
            paths["output"],
            "SELECT image_uri FROM class_stats WHERE run_id = 'first' AND class_name = 'stuff' AND pixels > 0",
        ).to_pylist()
    }
    rows = query_json(paths["output"], "review", "--run", "first", "--class", "stuff")
    assert [row["image_uri"] for row in rows] == [uri for _, uri in expected if uri in having]


def test_drift_is_quiet_for_the_same_images_and_names_what_moved_for_others(paths, tmp_path, tiny_artifact):
    root = copy_output(paths["output"], tmp_path / "nights")
    shutil.copytree(f"{paths['scenes']}/b", tmp_path / "again")  # run "second"'s images under other names
    segment(str(tmp_path / "again"), root, tiny_artifact, "again")
    same = run_job(
        "query.py", "--output", root, "drift", "--run", "again", "--baseline-runs", "1", "--format", "json", timeout=120
    )
    assert same.returncode == 0, same.stderr[-2000:]
    assert same.stderr == "" and not any(row["moved"] for row in json.loads(same.stdout))

    (tmp_path / "dark").mkdir()
    for index in range(6):  # a night unlike any before: flat dark frames
        Image.fromarray(np.full((40, 56, 3), 12 + index, np.uint8)).save(tmp_path / "dark" / f"{index}.png")
    segment(str(tmp_path / "dark"), root, tiny_artifact, "dark")
    dark = run_job(
        "query.py", "--output", root, "drift", "--baseline-runs", "1", "--format", "json", timeout=120
    )  # no --run: the latest run that segmented anything, "dark"
    assert dark.returncode == 6, dark.stderr[-2000:]
    rows = json.loads(dark.stdout)
    stats = delta_sql(
        root, "SELECT run_id, class_name, pixels FROM class_stats WHERE run_id IN ('again', 'dark')"
    ).to_pylist()
    for row in (r for r in rows if r["measure"] == "pixel share"):
        shares = {
            run: sum(s["pixels"] for s in stats if s["run_id"] == run and s["class_name"] == row["name"])
            / sum(s["pixels"] for s in stats if s["run_id"] == run)
            for run in ("again", "dark")
        }
        assert (row["baseline"], row["run"]) == pytest.approx((shares["again"], shares["dark"]))
        assert row["noise"] > 0 and row["moved"] == (abs(shares["dark"] - shares["again"]) > max(0.05, row["noise"]))
    moved = [row for row in rows if row["moved"]]
    assert moved and dark.stderr.splitlines() == [
        line for line in dark.stderr.splitlines() if line.startswith("drift: ")
    ]
    assert len(dark.stderr.splitlines()) == len(moved)
    for row in moved:
        assert f"drift: {'signal' if row['measure'] == 'signal PSI' else 'class'} {row['name']}: " in dark.stderr
    assert {row["name"] for row in rows if row["measure"] == "signal PSI"} == set(SIGNALS) - {"flip_disagreement"}


def test_a_run_with_no_run_before_it_is_one_line(paths):
    done = run_job("query.py", "--output", paths["output"], "drift", "--run", "first", timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: run first: no committed run before it segmented any image to compare with (--run)"
    ), done.stderr
