"""The error for a problem the user can fix, and credential redaction: no message any layer
prints shows a credential."""

from __future__ import annotations

from typing import Iterable

MASK = "***"
SHORTEST_CREDENTIAL = 4
"""Shorter values are not masked: they would mask ordinary words in messages, and guard nothing."""
_credentials: set[str] = set()


class UserError(Exception):
    """A problem the user can fix (a path, a setting, credentials); printed without a traceback.

    The message states facts; `settings` names the config fields it is about (such as "run_id"), and
    the command turns them into the flags a person types.
    """

    def __init__(self, message: str, *settings: str) -> None:
        super().__init__(message)
        self.settings = settings


def never_print(values: Iterable[str]) -> None:
    """Credentials this process holds (set where storage is configured): `redact` masks them."""
    _credentials.update(value for value in values if len(value) >= SHORTEST_CREDENTIAL)


def redact(text: str) -> str:
    """The text with every credential `never_print` was given masked, longest first."""
    for value in sorted(_credentials, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
