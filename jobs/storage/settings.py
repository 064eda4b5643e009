"""How to reach S3, translated once for every client: fsspec/s3fs, pyarrow and delta-rs.

S3 goes through the standard AWS credential chain (environment, config files, instance or pod
roles). The settings live in fsspec's per-protocol config, so every fsspec user in the process
(unet_core's artifact loader included) sees them, and in the `FSSPEC_S3` environment variable,
which is how they reach the Ray workers.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Iterator

import fsspec
import fsspec.asyn
import pyarrow.fs as pafs

from jobs.common.errors import MASK, UserError, never_print
from jobs.common.private_apis import parse_timestamps_fast

S3_ENV_VAR = "FSSPEC_S3"


CREDENTIAL_NAME = re.compile(r"key|secret|token|passw|credential", re.IGNORECASE)
"""S3 settings whose values are credentials (s3fs' key, secret, token; botocore's aws_*_key_id, ...)."""


AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


S3_MAX_ATTEMPTS = 8
"""botocore's and pyarrow's standard retry modes retry throttling, 5xx and timeouts with jittered
exponential backoff, up to this many attempts per request."""


@dataclass(frozen=True)
class StorageOptions:
    """How to reach S3; credentials are never flags (the AWS chain provides them)."""

    endpoint_url: str | None = None
    anonymous: bool = False


def configure_storage(options: StorageOptions) -> dict[str, str]:
    """Apply the options to this process; returns the environment variables that carry them
    to other processes (Ray workers), which read them when they import fsspec.

    A `FSSPEC_S3` already in the environment (set by the user, or by the job's runtime env,
    which the workers share) is used as it is.
    """
    never_print(os.environ.get(name, "") for name in AWS_CREDENTIAL_VARS)
    given = os.environ.get(S3_ENV_VAR)
    retries = {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}
    settings = given_settings(given) if given else {"config_kwargs": {"retries": retries}}
    if options.endpoint_url:
        settings["endpoint_url"] = options.endpoint_url
    if options.anonymous:
        settings["anon"] = True
    encoded = json.dumps(settings, sort_keys=True)
    if given and json.loads(given) != settings:
        shown = json.dumps(redacted(json.loads(given)), sort_keys=True)
        raise UserError(
            f"{S3_ENV_VAR} already holds the S3 settings ({shown}); give them there or as flags, not both",
            "s3_endpoint_url",
            "anonymous",
        )
    fsspec.config.conf["s3"] = {**fsspec.config.conf.get("s3", {}), **settings}
    parse_timestamps_fast()
    os.environ[S3_ENV_VAR] = encoded
    return {} if given else {S3_ENV_VAR: encoded}


def given_settings(text: str) -> dict:
    """The S3 settings of `FSSPEC_S3`, their credentials registered so that no message shows them;
    a value that is no JSON object is refused without being shown (it may hold credentials)."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{S3_ENV_VAR} is not valid JSON ({exc.msg} at character {exc.pos}); "
            "its value is not shown, as it may hold credentials"
        ) from None
    if not isinstance(settings, dict):
        raise UserError(f"{S3_ENV_VAR} must be a JSON object of s3fs settings, not a JSON {type(settings).__name__}")
    never_print(credentials(settings))
    return settings


def credentials(settings: object, secret: bool = False) -> Iterator[str]:
    """Every text value held under a credential's name, at any depth."""
    if isinstance(settings, dict):
        for name, value in settings.items():
            yield from credentials(value, secret or bool(CREDENTIAL_NAME.search(str(name))))
    elif isinstance(settings, list):
        for value in settings:
            yield from credentials(value, secret)
    elif secret and isinstance(settings, str):
        yield settings


def redacted(settings: object) -> object:
    """The settings with each credential's value masked, to be shown."""
    if isinstance(settings, dict):
        return {
            name: MASK if CREDENTIAL_NAME.search(str(name)) else redacted(value) for name, value in settings.items()
        }
    return [redacted(value) for value in settings] if isinstance(settings, list) else settings


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for a URI, with the same S3 settings as fsspec's (endpoint,
    anonymous access, retries): for pyarrow readers and writers, and Ray Train's `storage_filesystem`,
    which otherwise would not know an S3-compatible endpoint."""
    if not uri.startswith(("s3://", "s3a://")):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    settings = fsspec.config.conf.get("s3", {})
    options = {
        "anonymous": bool(settings.get("anon")),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
    }
    endpoint = settings.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint)
        options.update(
            endpoint_override=parsed.netloc,
            scheme=parsed.scheme or "https",
            region=os.environ.get("AWS_REGION", "us-east-1"),
        )
    return pafs.S3FileSystem(**options), uri.split("://", 1)[1]


def storage_options(output: str) -> dict[str, str] | None:
    """delta-rs settings for an s3:// root, from the same endpoint and anonymous settings as fsspec's.

    Credentials come from the AWS chain, as for every other reader. Commits use conditional puts
    (If-None-Match), which AWS S3 and the S3-compatible stores that support them honour:
    `check_conditional_writes` refuses a store that ignores them."""
    if not output.startswith(("s3://", "s3a://")):
        return None
    settings = fsspec.config.conf.get("s3", {})
    options = {"conditional_put": "etag", "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1")}
    endpoint = settings.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if urllib.parse.urlparse(endpoint).scheme == "http":
            options["AWS_ALLOW_HTTP"] = "true"
    if settings.get("anon"):
        options["AWS_SKIP_SIGNATURE"] = "true"
    return options
