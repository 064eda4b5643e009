"""Bad inputs across the seven commands, run as each command's own entry runs them (`run_main`), in this
process: what each printed and its exit status, as JSON lines. None of them gets far enough to start
Ray or load TensorFlow. `tests/test_bad_inputs.py` holds every one to a one-line error; run against
another checkout (`PYTHONPATH=CHECKOUT python tests/bad_inputs.py`) it gives the table before a change.

    python tests/bad_inputs.py [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import tempfile
from pathlib import Path

CASES = [
    ("segment", []),
    ("segment", ["--input", "MISSING", "--output", "OUT", "--model", "DIR"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "MISSING"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "BROKEN"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--batch-size", "0"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--actors", "3:1"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--run-id", "../up"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--run-id", "night\n"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--max-error-rate", "2"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--tile-overlap", "1.5"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--precision", "float8"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--mode", "spiral"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--progress-every", "-1"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--rows-per-file", "many"]),
    ("segment", ["--input", "DIR", "--output", "OUT", "--model", "DIR", "--frobnicate"]),
    ("train", []),
    ("train", ["--images", "MISSING", "--masks", "MISSING", "--num-classes", "2", "--output", "OUT"]),
    ("train", ["--images", "IMAGE", "--masks", "DIR", "--num-classes", "2", "--output", "OUT"]),
    ("train", ["--images", "DIR", "--masks", "DIR", "--num-classes", "0", "--output", "OUT"]),
    ("train", ["--images", "DIR", "--masks", "DIR", "--num-classes", "2", "--output", "OUT", "--mask-map", "255-1"]),
    ("train", ["--images", "DIR", "--masks", "DIR", "--num-classes", "2", "--output", "OUT", "--epochs", "0"]),
    ("train", ["--images", "DIR", "--masks", "DIR", "--num-classes", "2", "--output", "OUT", "--val-fraction", "1.5"]),
    ("train", ["--images", "DIR", "--masks", "DIR", "--num-classes", "2", "--output", "OUT", "--loss", "hinge"]),
    ("train", ["--images", "DIR", "--masks", "DIR", "--num-classes", "2", "--output", "OUT", "--class-weights", "a,b"]),
    ("evaluate", []),
    ("evaluate", ["--model", "MISSING", "--images", "DIR", "--masks", "DIR", "--output", "OUT"]),
    ("evaluate", ["--model", "DIR", "--images", "DIR", "--masks", "DIR", "--output", "OUT", "--mask-map", "x"]),
    ("evaluate", ["--model", "DIR", "--images", "DIR", "--masks", "DIR", "--output", "OUT", "--batch-size", "-1"]),
    ("query", []),
    ("query", ["--output", "MISSING", "runs"]),
    ("query", ["--output", "DIR", "runs"]),
    ("query", ["--output", "ROOT", "frobnicate"]),
    ("query", ["--output", "ROOT", "find", "--class", "thing"]),
    ("query", ["--output", "ROOT", "find", "--class", "thing", "--min-fraction", "2"]),
    ("query", ["--output", "ROOT", "summary", "--run", "nosuch"]),
    ("query", ["--output", "ROOT", "sql", "SELEC 1"]),
    ("query", ["--output", "ROOT", "--to", "DIR", "runs"]),
    ("report", []),
    ("report", ["--output", "MISSING", "--html", "OUT/r.html"]),
    ("report", ["--output", "ROOT", "--html", "OUT/r.html"]),
    ("report", ["--output", "ROOT", "--html", "OUT/r.html", "--samples", "0"]),
    ("report", ["--output", "ROOT", "--html", "OUT/r.html", "--run", "nosuch"]),
    ("export_masks", []),
    ("export_masks", ["--output", "MISSING", "--dest", "OUT"]),
    ("export_masks", ["--output", "ROOT", "--dest", "FILE"]),
    ("export_masks", ["--output", "ROOT", "--dest", "OUT", "--run", "nosuch"]),
    ("maintain", []),
    ("maintain", ["--output", "MISSING"]),
    ("maintain", ["--output", "DIR"]),
    ("maintain", ["--output", "ROOT", "--retention-hours", "0"]),
    ("maintain", ["--output", "FILE"]),
]
"""(command, arguments): MISSING a path that does not exist, DIR an empty folder, FILE a text file,
IMAGE one PNG, BROKEN a folder whose metadata.json is not JSON, ROOT an output root with empty
tables, OUT a path to write to."""


def places(work: Path) -> dict[str, str]:
    """The paths the cases name, made under `work`."""
    from PIL import Image

    from jobs.output.tables import ensure_tables

    folder, broken = work / "empty", work / "broken"
    folder.mkdir()
    broken.mkdir()
    (broken / "metadata.json").write_text("{not json")
    (work / "notes.txt").write_text("a text file\n")
    Image.new("RGB", (4, 4)).save(work / "one.png")
    ensure_tables(str(work / "root"))
    return {
        "MISSING": str(work / "no" / "such"),
        "DIR": str(folder),
        "FILE": str(work / "notes.txt"),
        "IMAGE": str(work / "one.png"),
        "BROKEN": str(broken),
        "ROOT": str(work / "root"),
        "OUT": str(work / "out"),
    }


def run_case(command: str, argv: list[str]) -> dict:
    """One command line as its entry runs it: exit status and everything it printed."""
    from jobs.cli.main import run_main

    module = importlib.import_module(f"jobs.{command}")
    environment = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(module.main, argv)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    os.environ.clear()
    os.environ.update(environment)
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    named = places(work)
    for command, argv in CASES:
        concrete = [
            named.get(arg, arg.replace("OUT", named["OUT"], 1) if arg.startswith("OUT/") else arg) for arg in argv
        ]
        print(json.dumps({"command": command, "args": argv, **run_case(command, concrete)}), flush=True)


if __name__ == "__main__":
    main()
