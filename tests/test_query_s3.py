"""query.py, report.py and export_masks.py on an s3:// output root served by a real S3 server (SeaweedFS)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("s3_server", reason="needs the SeaweedFS test server plugin (tests/s3_server.py)")

from delta_read import delta_sql, s3_options  # noqa: E402
from run_output import make_output  # noqa: E402
from test_segment_job import ROOT  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_output(tmp_path_factory, tiny_artifact) -> str:
    return make_output(str(tmp_path_factory.getbasetemp() / "segmented"), tiny_artifact)["output"]


def run_with(env: dict, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_an_s3_output_root_answers_like_the_local_one(s3_server, s3_bucket, local_output, tmp_path):
    fs = s3_server.filesystem()
    fs.put(local_output, f"{s3_bucket}/seg", recursive=True)
    remote, env = f"s3://{s3_bucket}/seg", s3_server.env()
    for args in (
        ["runs"],
        ["summary"],
        ["errors", "--run", "first"],
        ["find", "--class", "thing", "--min-fraction", "0.5"],
    ):
        answers = []
        for root in (local_output, remote):
            done = run_with(env, "query.py", "--output", root, "--format", "json", *args)
            assert done.returncode == 0, done.stderr[-2000:]
            answers.append(json.loads(done.stdout))
        assert answers[0] == answers[1] and answers[0], args
        if args == ["runs"]:  # the ghost run's parts were copied up too, and stay invisible there
            recorded = delta_sql(remote, "SELECT run_id, ok FROM runs ORDER BY run_id", s3_options(env)).to_pylist()
            assert [{k: row[k] for k in ("run_id", "ok")} for row in answers[1]] == recorded
            assert [row["run_id"] for row in recorded] == ["first", "second"]

    done = run_with(env, "report.py", "--output", remote, "--run", "first", "--html", f"{remote}/report.html")
    assert done.returncode == 0, done.stderr[-2000:]
    assert fs.cat(f"{s3_bucket}/seg/report.html").count(b'<figure class="sample">') == 6
    done = run_with(env, "export_masks.py", "--output", remote, "--run", "first", "--dest", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(os.listdir(tmp_path / "m" / "a")) == 4


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed, checked to be the only one and no traceback."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


READERS = {"query.py": ["runs"], "report.py": ["--html", "{tmp}/r.html"], "export_masks.py": ["--dest", "{tmp}/m"]}


@pytest.mark.parametrize("script", sorted(READERS))
def test_the_readers_take_the_storage_flags_and_answer_a_storage_failure_in_one_line(
    script, s3_server, s3_bucket, local_output, tmp_path
):
    """Issue 30: on an s3:// output without credentials these three printed a 64-line traceback, and none
    took --s3-endpoint-url."""
    fs = s3_server.filesystem()
    fs.put(local_output, f"{s3_bucket}/seg", recursive=True)
    remote, args = f"s3://{s3_bucket}/seg", [arg.format(tmp=tmp_path) for arg in READERS[script]]
    flagged = {k: v for k, v in s3_server.env().items() if k != "AWS_ENDPOINT_URL"}
    done = run_with(flagged, script, "--output", remote, "--s3-endpoint-url", s3_server.endpoint, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    anonymous = {k: v for k, v in s3_server.env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert error_line(run_with(anonymous, script, "--output", remote, *args)).startswith(f"error: {remote}: ")
    wrong = s3_server.env(s3_server.env()["AWS_ACCESS_KEY_ID"], "not-the-secret")
    assert error_line(run_with(wrong, script, "--output", remote, *args)).startswith(f"error: {remote}: access denied")


def test_a_local_destination_the_readers_cannot_write_is_one_line(local_output, tmp_path):
    """`query --to DIR`, `report --html DIR` and `export --dest FILE` ended in tracebacks."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    folder, plain = tmp_path / "folder", tmp_path / "plain.txt"
    folder.mkdir()
    plain.write_text("a file, not a folder")
    for script, args, where in (
        ("query.py", ["runs", "--to", str(folder)], folder),
        ("report.py", ["--html", str(folder)], folder),
        ("export_masks.py", ["--dest", str(plain)], plain),
    ):
        line = error_line(run_with(env, script, "--output", local_output, *args))
        assert line.startswith(f"error: {where}: "), line
