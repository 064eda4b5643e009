"""Benchmark: listing an S3 prefix of many folders, folder by folder with several listers at once
(what `list_inputs` does) against one paginator over the whole prefix (what it did before).

    python bench/listing.py [--keys 100000] [--folders 100]

Runs the test suite's S3 server (SeaweedFS on loopback) and fills a bucket with tiny objects named
like images, spread evenly over the folders. Both listings must return the same rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, print_table

sys.path.append(str(ROOT / "tests"))

from s3_server import seaweedfs  # noqa: E402

from jobs.common.private_apis import s3_pages  # noqa: E402
from jobs.storage import listing  # noqa: E402
from jobs.storage.settings import StorageOptions, configure_storage  # noqa: E402

UPLOAD_BATCH = 2000


def fill(fs, bucket: str, keys: int, folders: int) -> None:
    names = [f"{bucket}/photos/f{index % folders:04d}/img_{index:08d}.jpg" for index in range(keys)]
    for start in range(0, keys, UPLOAD_BATCH):
        fs.pipe({name: b"x" for name in names[start:start + UPLOAD_BATCH]})


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, seaweedfs(Path(work)) as server:
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
        configure_storage(StorageOptions(server.endpoint, False))
        fs = server.filesystem()
        fs.mkdir("bench")
        started = time.perf_counter()
        fill(fs, "bench", args.keys, args.folders)
        print(f"uploaded {args.keys:,} objects in {args.folders} folders in {time.perf_counter() - started:.1f} s")
        fs.invalidate_cache()
        single, single_cpu, expected = timed(lambda: one_paginator(fs, "bench"))
        fanned, fanned_cpu, listed = timed(lambda: listing.list_inputs(["s3://bench/photos/"]))
        same = sorted(listed.column("image_uri").to_pylist()) == sorted(expected.column("image_uri").to_pylist())
        print(f"same {listed.num_rows:,} keys from both: {same}")
        rows = [["one paginator", single, single_cpu, args.keys / single, 1.0],
                [f"{listing.LISTERS} listers, folder by folder", fanned, fanned_cpu, args.keys / fanned,
                 single / fanned]]
        print_table(["listing", "seconds", "client CPU s", "keys/s", "speed-up"], rows)


if __name__ == "__main__":
    main()
