"""Benchmark: listing an S3 prefix of many folders, folder by folder with several listers at once
(what `list_inputs` does) against one paginator over the whole prefix (what it did before), and the
paginator with botocore's own timestamp parser (dateutil) against the standard library's, and with
the keys read by the listing (`jobs/storage/list_pages.py`) instead of botocore's model.

    python bench/listing.py [--keys 100000] [--folders 100] [--latency-ms 0 25]

Runs the test suite's S3 server (SeaweedFS on loopback) and fills a bucket with tiny objects named
like images, spread evenly over the folders. Both listings must return the same rows. Each is run
straight against the server and through `tests/delaying_proxy.py` holding every request for each
`--latency-ms` (AWS S3 answers a list page in tens of milliseconds; loopback in well under one).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import botocore.parsers
from botocore.utils import parse_timestamp
from common import ROOT, print_table

sys.path.append(str(ROOT / "tests"))

from delaying_proxy import delaying  # noqa: E402
from s3_server import seaweedfs  # noqa: E402

from jobs.common.private_apis import s3_pages  # noqa: E402
from jobs.storage import listing  # noqa: E402
from jobs.storage.list_pages import read_keys_fast  # noqa: E402
from jobs.storage.settings import S3_ENV_VAR, StorageOptions, configure_storage  # noqa: E402

UPLOAD_BATCH = 2000


def fill(fs, bucket: str, keys: int, folders: int) -> None:
    names = [f"{bucket}/photos/f{index % folders:04d}/img_{index:08d}.jpg" for index in range(keys)]
    for start in range(0, keys, UPLOAD_BATCH):
        fs.pipe({name: b"x" for name in names[start : start + UPLOAD_BATCH]})


def one_paginator(fs, bucket: str):
    """The whole prefix as one paginated listing, page after page."""
    import fsspec.asyn

    pages = s3_pages(fs, "list_objects_v2", Bucket=bucket, Prefix="photos/")
    tables = []
    while True:
        try:
            tables.append(listing._page_table(bucket, fsspec.asyn.sync(fs.loop, pages.__anext__)))
        except StopAsyncIteration:
            return listing._concat(tables)


def timed(action):
    """(wall seconds, this process's CPU seconds, result): CPU close to wall means the client's own
    parsing, not the store's latency, bounds the listing."""
    started, cpu = time.perf_counter(), time.process_time()
    result = action()
    return time.perf_counter() - started, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 25.0])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work, seaweedfs(Path(work)) as server:
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
        fs = server.filesystem()
        fs.mkdir("bench")
        started = time.perf_counter()
        fill(fs, "bench", args.keys, args.folders)
        print(f"uploaded {args.keys:,} objects in {args.folders} folders in {time.perf_counter() - started:.1f} s")
        for latency in args.latency_ms:
            with delaying(server.endpoint, latency / 1000) as endpoint:
                rows += both_listings(dataclasses.replace(server, endpoint=endpoint), args.keys, latency)
    print_table(["latency ms", "listing", "seconds", "client CPU s", "keys/s", "speed-up"], rows)


def both_listings(server, keys: int, latency: float) -> list[list]:
    """One paginator (botocore's timestamp parser, then ours) and the listers, through
    `server.endpoint`, checked to list the same keys."""
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    os.environ.pop(S3_ENV_VAR, None)  # the previous latency's endpoint: each pass is configured afresh
    botocore.parsers.DEFAULT_TIMESTAMP_PARSER = parse_timestamp  # each new client takes it
    old, old_cpu, before = timed(lambda: one_paginator(server.filesystem(), "bench"))
    configure_storage(StorageOptions(server.endpoint, False))
    single, single_cpu, expected = timed(lambda: one_paginator(server.filesystem(), "bench"))
    fast = server.filesystem()
    read_keys_fast(fast.s3)
    own, own_cpu, read = timed(lambda: one_paginator(fast, "bench"))
    fanned, fanned_cpu, listed = timed(lambda: listing.list_inputs(["s3://bench/photos/"]))
    tables = (before, expected, read, listed)
    same = [sorted(t.column("image_uri").to_pylist()) for t in tables]
    times = [t.column("source_modified") for t in tables]
    print(
        f"latency {latency:g} ms: the same {listed.num_rows:,} keys from all four: {all(s == same[0] for s in same)}; "
        f"the same times from all three parsers: {all(t.equals(times[0]) for t in times[:3])}"
    )
    return [
        [latency, "one paginator, botocore's timestamps", old, old_cpu, keys / old, 1.0],
        [latency, "one paginator", single, single_cpu, keys / single, old / single],
        [latency, "one paginator, keys read by the listing", own, own_cpu, keys / own, old / own],
        [latency, f"{listing.LISTERS} listers, folder by folder", fanned, fanned_cpu, keys / fanned, old / fanned],
    ]


if __name__ == "__main__":
    main()
