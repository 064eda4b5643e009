"""The installed commands: every `[project.scripts]` entry names a function its module defines."""
import importlib
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_entry_point_names_a_function_of_its_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    commands = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem != "__init__")
    assert sorted(target.split(":")[0].removeprefix("jobs.") for target in scripts.values()) == commands
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"{name} -> {target}"
