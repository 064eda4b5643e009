"""Flag groups, each defined once and added by every command that takes it."""
from __future__ import annotations

import argparse

from jobs.cli.types import positive_int
from jobs.storage.files import DEFAULT_MAX_BYTES
from unet_core import DEFAULT_MAX_PIXELS


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint-url", metavar="URL", default=None,
                        help="S3-compatible store to use instead of AWS (default: $AWS_ENDPOINT_URL if set)")
    parser.add_argument("--anonymous", action="store_true",
                        help="read S3 without credentials (public buckets)")


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The limits segment.py holds its images to, for the images and true masks of a labelled collection."""
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images and masks declaring more pixels, before decoding them "
                             f"(default: {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-bytes", type=positive_int, default=DEFAULT_MAX_BYTES,
                        help=f"refuse larger image and mask files before reading them (default: {DEFAULT_MAX_BYTES:,})")
