"""Every command answers a bad input with one line and exit status 2, never a traceback: 52 command
lines across the seven commands (tests/bad_inputs.py), run in one process of their own as their
entries run them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import CASES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> list[dict]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bad_inputs.py"), "--work", str(tmp_path_factory.mktemp("bad-inputs"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c}-{'_'.join(a)[:40]}" for c, a in CASES])
def test_a_bad_input_is_one_line_and_status_2(answers, index):
    answer = answers[index]
    assert [answer["command"], answer["args"]] == list(CASES[index])
    assert answer["status"] == 2 and "Traceback" not in answer["stderr"], answer
    errors = [line for line in answer["stderr"].splitlines() if line.startswith("error: ") or ": error: " in line]
    assert len(errors) == 1, answer
    usage = [line for line in answer["stderr"].splitlines() if line.startswith("usage: ")]
    # argparse's own refusals come with its usage; the commands' own errors are the line alone
    assert answer["stderr"].strip().splitlines()[-1] == errors[0] and (usage or errors[0].startswith("error: "))
