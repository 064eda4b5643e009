"""The incremental selection: which listed images have no current result from this model."""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from jobs.output.tables import committed_files, scan
from jobs.storage.files import filesystem


def select_new(listing: pa.Table, output: str, model_sha256: str, retry_errors: bool) -> tuple[pa.Table, int]:
    """Split a listing into (to process, number skipped): an image is done when its current row is
    for this very version (URI, size, version) and came from this model; an error counts as done
    unless it was transient (the store failed, not the file) or `retry_errors` asks for every error.
    An image listed without a version (a list file with no ETag, version or modification time column)
    is never done: nothing could tell that it was replaced, so it is processed again every run.

    DuckDB semi-joins the listing (an Arrow table, scanned in place) with the `current` rows read
    straight from their committed Parquet files, only the columns needed. Both sides are keyed by
    a 128-bit hash (md5) of the version: the join's hash table then holds 16 bytes per row instead
    of the strings, and an accidental collision (which would skip one image) has odds near 1e-24
    even for 10 million images against 10 million earlier rows."""
    files = committed_files(output, "current")
    if not files or not listing.num_rows:
        return listing, 0
    con = duckdb.connect()
    if "://" in output:
        con.register_filesystem(filesystem(output)[0])
    positions = pa.array(np.arange(listing.num_rows, dtype=np.int64))
    con.register("listing", listing.select(["image_uri", "source_size", "source_version"]).append_column(
        "position", pa.chunked_array([positions])))
    # an error row counts as done unless the store failed (transient) or every error is retried
    status = "AND status = 'ok'" if retry_errors else "AND coalesce(error_kind, '') <> 'transient'"
    done = con.execute(f"""
        WITH listed AS (SELECT position, {VERSION_KEY} AS key FROM listing WHERE source_version <> ''),
             earlier AS (SELECT {VERSION_KEY} AS key FROM ({scan(con, "current", files)})
                         WHERE model_sha256 = $model {status})
        SELECT position FROM listed SEMI JOIN earlier USING (key)""", {"model": model_sha256}).fetchnumpy()["position"]
    if not len(done):
        return listing, 0
    keep = np.ones(listing.num_rows, dtype=bool)
    keep[done] = False
    return listing.filter(pa.array(keep)), len(done)


VERSION_KEY = "md5_number(image_uri || chr(0) || source_size::VARCHAR || chr(0) || source_version)"
"""An image version (URI, size, version) as a 128-bit number."""
