"""Argument types shared by the job command lines: a bad number is a one-line argparse error."""

from __future__ import annotations

import argparse
from typing import Callable

from jobs.cluster.capacity import actor_bounds
from jobs.common.errors import UserError


def _checked(convert: Callable[[str], float], accept: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


positive_int = _checked(int, lambda v: v >= 1, "at least 1")
positive_float = _checked(float, lambda v: v > 0, "above 0")
non_negative_float = _checked(float, lambda v: v >= 0, "0 or more")
fraction = _checked(float, lambda v: 0 <= v <= 1, "between 0 and 1")
open_fraction = _checked(float, lambda v: 0 < v < 1, "strictly between 0 and 1")
overlap = _checked(float, lambda v: 0 <= v < 1, "at least 0 and below 1")


def int_between(low: int, high: int) -> Callable[[str], float]:
    return _checked(int, lambda v: low <= v <= high, f"between {low} and {high}")


def pool_size(text: str) -> str:
    """--actors: auto, MIN or MIN:MAX, checked before anything runs or is created."""
    if text != "auto":
        try:
            low, high = actor_bounds(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected auto, MIN or MIN:MAX, e.g. 2 or 1:8") from None
        if not 1 <= low <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX")
    return text


def mask_map(text: str) -> str:
    """A `--mask-map` value, checked as the command line is read rather than in the workers that use it."""
    from jobs.training.data import parse_mask_map

    try:
        parse_mask_map(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
