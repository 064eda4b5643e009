"""Flag groups, each defined once and added by every command that takes it, and the one way a
command turns its parsed flags into its typed config."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
from typing import TypeVar

from jobs.cli.types import non_negative_float, overlap, pool_size, positive_float, positive_int
from jobs.cluster.connect import LOG_LEVELS
from jobs.inference.pipeline import MODES
from jobs.storage.files import DEFAULT_MAX_BYTES
from unet_core.image import DEFAULT_MAX_PIXELS, PRECISIONS

Config = TypeVar("Config")


def config_from(config_type: type[Config], args: argparse.Namespace, **overrides) -> Config:
    """The command's typed config from the flags it parsed (flags the config has no field for are
    the command's own)."""
    fields = {field.name for field in dataclasses.fields(config_type)}
    return config_type(**{**{k: v for k, v in vars(args).items() if k in fields}, **overrides})


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON object on stdout (what was done, counts, seconds, the output, the "
        "model's whole sha256) instead of the lines for people: for schedulers",
    )


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {installed_version()}",
        help="print the version of unet-segment and exit",
    )


def installed_version() -> str:
    """The package's version; a checkout shipped to a cluster with `--working-dir` is not installed."""
    try:
        return importlib.metadata.version("unet-segment")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: a source checkout)"


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help="S3-compatible store to use instead of AWS (default: $AWS_ENDPOINT_URL if set)",
    )
    parser.add_argument("--anonymous", action="store_true", help="read S3 without credentials (public buckets)")


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """Which Ray cluster, and the bounded wait for an autoscaling one to add the nodes a job asks for."""
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to use (default: the one this job was submitted to, else a local Ray started in-process)",
    )
    parser.add_argument(
        "--wait-for-nodes",
        type=non_negative_float,
        default=300.0,
        metavar="SECONDS",
        help="on an autoscaling cluster, how long to wait for the nodes the job needs before "
        "giving up with an error naming them (default: 300)",
    )
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "--quiet",
        dest="verbosity",
        action="store_const",
        const="quiet",
        default="normal",
        help="only the job's own lines and errors: no Ray or TensorFlow log lines, no worker output",
    )
    talk.add_argument(
        "--verbose",
        dest="verbosity",
        action="store_const",
        const="verbose",
        help="also Ray's own log lines and Ray Data's progress blocks (default: the job's own "
        "progress line, and Ray's warnings)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="lowest level of Ray's, Ray Data's and TensorFlow's log lines to show (default: "
        "warning for Ray and error for TensorFlow; info with --verbose, error with --quiet)",
    )


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The limits every image (and every true mask of a labelled collection) is held to."""
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images (and masks) declaring more pixels, before decoding them (default: {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--max-bytes",
        type=positive_int,
        default=DEFAULT_MAX_BYTES,
        help=f"refuse larger image (and mask) files before reading them (default: {DEFAULT_MAX_BYTES:,}, 1 GiB)",
    )


def add_replica_flags(parser: argparse.ArgumentParser) -> None:
    """Everything that says how a job runs the model (`ReplicaConfig`): segment.py and evaluate.py
    both take all of it, defaults included, so a score is worth exactly what the masks are."""
    pool = parser.add_argument_group("model replicas")
    pool.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="images per model call; fixed, the last batch is padded (default: 8)",
    )
    pool.add_argument(
        "--actors",
        type=pool_size,
        default="auto",
        metavar="MIN[:MAX]",
        help="size of the autoscaling pool of model replicas (default: auto = 1 up to what "
        "the cluster's GPUs or nodes hold)",
    )
    pool.add_argument(
        "--cpus-per-actor",
        type=positive_float,
        default=None,
        help="CPUs reserved per replica; TensorFlow's thread pool is sized to it (default: 1 "
        "with GPUs, else the largest node's CPUs minus 0.5 left for decoding)",
    )
    pool.add_argument(
        "--gpus-per-actor",
        type=non_negative_float,
        default=0.0,
        help="GPUs per replica: 1 pins one GPU each, 0.5 puts two replicas on a GPU (default: 0)",
    )
    pool.add_argument(
        "--unsafe-allow-code",
        action="store_true",
        help="UNSAFE: load models whose file carries code (Lambda layers); only for models you trust",
    )
    images = parser.add_argument_group("how images meet the model")
    images.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bfloat16 on CPUs with bf16 instructions, float16 on GPUs, else float32",
    )
    images.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="letterbox: scale each image into one model input (ordinary photos); tile: "
        "sliding-window inference at full resolution, for large images (default: the "
        "mode the model was trained in, recorded in its artifact)",
    )
    images.add_argument(
        "--tile-overlap",
        type=overlap,
        default=0.25,
        help="with --mode tile, the fraction by which tiles overlap (default: 0.25)",
    )
    images.add_argument(
        "--tta",
        choices=("none", "flip"),
        default="none",
        help="flip: average each prediction with that of the mirrored image (2x compute)",
    )
    add_limit_flags(images)
    add_cluster_flags(parser)
    add_storage_flags(parser)
