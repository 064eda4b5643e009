"""One-line errors for people: how every command ends, with its exit status."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from jobs.common.errors import UserError, redact
from unet_core.errors import ArtifactError


FLAGS = {"class_name": "--class", "inputs": "--input"}
"""The flags whose config field is not argparse's name for them."""


def flag(setting: str) -> str:
    """The flag a config field is set by: argparse's own naming, the other way round."""
    return FLAGS.get(setting) or "--" + setting.replace("_", "-")


def one_line(exc: Exception) -> str:
    """The error's facts, and the flags they are about."""
    settings = getattr(exc, "settings", ())
    return f"{exc} ({', '.join(map(flag, settings))})" if settings else str(exc)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a job's main and turn user-fixable failures into `error: ...` and exit status 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads, in this process and its replicas
    try:
        code = main(argv)
    except (UserError, ArtifactError) as exc:
        print(f"error: {redact(one_line(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception:  # a bug: its traceback as Python prints it, less any credential a message carries
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
