"""The only place the project touches private APIs of s3fs, botocore and Ray; `tests/test_private_apis.py`
fails by name when an upgrade removes one.

Each is used because the public API cannot do the job:
- s3fs `_call_s3`: a PUT with `If-None-Match: *` (create only if absent), which `pipe_file` cannot send.
- s3fs `_list_pages`: one listing page at a time; `find` holds every key's info and fills a cache.
- botocore `parsers.DEFAULT_TIMESTAMP_PARSER`: the parser of every timestamp in a response. Public
  would be `set_parser_defaults` on a session's parser factory, but s3fs makes its sessions itself.
- botocore `handlers._handle_200_error`: its check of S3's 200 answers, which must run after the
  listing has taken a page's keys (jobs/storage/list_pages.py); a client's handlers can only be
  reordered by unregistering one and registering it again.
- Ray `_private.state.state.get_cluster_config()`: the autoscaler's node types (what the cluster can grow to).
- Ray `_private.worker._global_node`: whether this process started its Ray (then nothing can be added).
- Ray Train v2's `_internal.execution` loggers: they log every report and checkpoint at INFO in the
  worker, and only their own names can quiet them.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, AsyncIterator, Callable

import fsspec.asyn


def s3_call(fs: Any, method: str, **request: Any) -> dict:
    """One botocore call through s3fs' client, with s3fs' retries and error mapping."""
    return fsspec.asyn.sync(fs.loop, fs._call_s3, method, **request)


def s3_pages(fs: Any, method: str, **request: Any) -> AsyncIterator[dict]:
    """The pages of a paginated botocore call, to be awaited one at a time on `fs.loop`."""
    return fs._list_pages(method, **request, **fs.req_kw).__aiter__()


def parse_timestamps_fast() -> None:
    """botocore reads each listed key's LastModified with dateutil's general parser: about 70% of the
    CPU a listing costs (2.7 of 3.7 s for 20,000 keys, profiled), and a listing of millions of keys
    is bound by that CPU. S3 writes them in ISO 8601, which the standard library reads directly. Takes
    effect for the clients made after it: each parser takes the default when it is built."""
    import botocore.parsers

    botocore.parsers.DEFAULT_TIMESTAMP_PARSER = iso_timestamp


def iso_timestamp(value: Any) -> dt.datetime:
    """An ISO 8601 time with its zone by the standard library; anything else (HTTP dates, epochs) as
    botocore parses it."""
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    from botocore.utils import parse_timestamp  # only off the path every listed key takes

    return parse_timestamp(value)


def s3_error_check() -> Callable[..., None]:
    """botocore's handler that turns an error or a truncated body inside a 200 answer into a 500."""
    import botocore.handlers

    return botocore.handlers._handle_200_error


def ray_cluster_config() -> Any | None:
    """The autoscaler's declared node groups (autoscaler v2), or None where none is reported."""
    import ray._private.state

    return ray._private.state.state.get_cluster_config()


def ray_head_started_here() -> bool:
    """Whether this process started the (head) node its Ray runs on."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node is not None and node.head


def quiet_ray_train_reports() -> None:
    """Ray Train logs two long lines per report (the whole metrics dict, the checkpoint's path) that
    bury the job's own epoch line; one logger is named by its module, the other by its file."""
    import ray.train.v2._internal.execution.context as context
    import ray.train.v2._internal.execution.storage as storage

    for module in (context, storage):
        module.logger.setLevel(logging.WARNING)
