"""One-line errors for people: a bad flag or missing path ends the job with a clear message."""
from __future__ import annotations

import sys
from typing import Callable

from unet_core import ArtifactError


class UserError(Exception):
    """A problem the user can fix (a path, a flag, credentials); printed without a traceback."""


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a job's main and turn user-fixable failures into `error: ...` and exit status 2."""
    try:
        code = main(argv)
    except (UserError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
