"""The installed commands: every `[project.scripts]` entry names a function its module defines, and
every command's flags are in its reference page."""

import importlib
import pathlib
import re
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_entry_point_names_a_function_of_its_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    commands = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem != "__init__")
    assert sorted(target.split(":")[0].removeprefix("jobs.") for target in scripts.values()) == commands
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"{name} -> {target}"


PAGES = {
    "segment": ["--help"],
    "query": ["find", "--help"],
    "report": ["--help"],
    "export_masks": ["--help"],
    "maintain": ["--help"],
    "train": ["--help"],
    "evaluate": ["--help"],
}
REFERENCE = {
    "segment": "segment.md",
    "query": "results.md",
    "report": "results.md",
    "export_masks": "results.md",
    "maintain": "output.md",
    "train": "training.md",
    "evaluate": "training.md",
}


@pytest.mark.parametrize("command", sorted(PAGES))
def test_every_flag_is_in_the_commands_reference(command, capsys, monkeypatch):
    """The flag tables of the docs are written by hand beside argparse's help; a flag added to one and
    not the other is caught here (a row may name several flags)."""
    monkeypatch.setenv("COLUMNS", "1000")  # no flag name broken across lines by argparse's wrapping
    with pytest.raises(SystemExit):
        importlib.import_module(f"jobs.{command}").parse_args(PAGES[command])
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", capsys.readouterr().out)) - {"--help"}
    rows = re.findall(r"^\| (`--[^|]+)\|", (ROOT / "docs" / REFERENCE[command]).read_text(), re.M)
    documented = {flag for row in rows for flag in re.findall(r"`(--[a-z][a-z-]+)", row)}
    assert flags - documented == set()


@pytest.mark.parametrize("command", ["segment", "train", "evaluate", "query", "report", "export_masks", "maintain"])
def test_every_command_says_its_version(command, capsys):
    """Issue 30: no command had --version."""
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"jobs.{command}").parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.split()[-1] == version("unet-segment")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_bad_mask_map_is_refused_as_the_command_line_is_read(command, capsys):
    """Issue 30: --mask-map was parsed inside the Ray Train workers (train) or after Ray started (evaluate)."""
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"jobs.{command}").parse_args(["--mask-map", "255-1", "--output", "out"])
    assert done.value.code == 2
    assert "argument --mask-map: '255-1': expected STORED:CLASS pairs such as 255:1,0:0" in capsys.readouterr().err
