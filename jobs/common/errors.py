"""One-line errors for people: a bad flag or missing path ends the job with a clear message, and
no message shows a credential."""
from __future__ import annotations

import sys
import traceback
from typing import Callable, Iterable

from unet_core import ArtifactError

MASK = "***"
SHORTEST_CREDENTIAL = 4
"""Shorter values are not masked: they would mask ordinary words in messages, and guard nothing."""
_credentials: set[str] = set()


class UserError(Exception):
    """A problem the user can fix (a path, a flag, credentials); printed without a traceback."""


def never_print(values: Iterable[str]) -> None:
    """Credentials this process holds (set where storage is configured): `redact` masks them."""
    _credentials.update(value for value in values if len(value) >= SHORTEST_CREDENTIAL)


def redact(text: str) -> str:
    """The text with every credential `never_print` was given masked, longest first."""
    for value in sorted(_credentials, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a job's main and turn user-fixable failures into `error: ...` and exit status 2."""
    try:
        code = main(argv)
    except (UserError, ArtifactError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception:  # a bug: its traceback as Python prints it, less any credential a message carries
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
