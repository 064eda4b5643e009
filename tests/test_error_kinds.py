"""Errors carry a kind: `transient` when the store failed after its retries (the next --incremental
run tries the image again), `invalid` when the file itself is refused (tried again only with
--retry-errors). The store failure is real: a loopback proxy in front of the S3 server drops every
connection that asks for one object, as a flaky network or an overloaded store does."""

import contextlib
import http.client
import http.server
import json
import threading
import urllib.parse

import pyarrow as pa
import pytest
from delta_read import delta_sql
from test_segment_job import run_job

pytestmark = pytest.mark.ray

FLAKY = "flaky.png"


S3_ERRORS = {
    "expired.png": (400, "ExpiredToken"),
    "throttled.png": (503, "SlowDown"),
    "denied.png": (403, "AccessDenied"),
}
"""Objects the proxy answers with the store's own error, as S3 does: a session token that expired,
throttling, a bucket policy that denies the object."""


class DroppingProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to the S3 server, except that while `failing` it closes the
    connection, unanswered, on any request for an object named FLAKY, and answers a GET of an object
    named in S3_ERRORS with that error."""

    daemon_threads = True

    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlparse(upstream)
        self.failing = True
        super().__init__(("127.0.0.1", 0), ForwardRequest)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ForwardRequest(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def forward(self) -> None:
        name = urllib.parse.urlparse(self.path).path.rsplit("/", 1)[-1]
        if self.server.failing and name == FLAKY:
            self.close_connection = True
            return
        if self.command == "GET" and name in S3_ERRORS:
            self.reply_error(*S3_ERRORS[name])
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=30)
        upstream.request(self.command, self.path, body=body or None, headers=dict(self.headers))
        reply = upstream.getresponse()
        content = reply.read()
        self.send_response(reply.status, reply.reason)
        for name, value in reply.getheaders():
            if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(name, value)
        # a HEAD reply's length is the object's, not that of its (empty) body
        self.send_header(
            "Content-Length", reply.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(content))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
        upstream.close()

    def reply_error(self, status: int, code: str) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code} from the '
            f"test proxy</Message><RequestId>proxy</RequestId></Error>"
        ).encode()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward


def dropping_proxy(upstream: str):
    return serving(DroppingProxy(upstream))


@contextlib.contextmanager
def serving(proxy: http.server.ThreadingHTTPServer):
    """The proxy answering on loopback for the block, shut down after it."""
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_transient_failure_is_retried_by_the_next_incremental_run_and_an_invalid_file_is_not(
    s3_server, s3_bucket, tmp_path, tiny_artifact, mixed_folder
):
    fs = s3_server.filesystem()
    for name in ("grey.png", "corrupt.png"):
        fs.put_file(mixed_folder[name], f"{s3_bucket}/photos/{name}")
    fs.put_file(mixed_folder["rgba.png"], f"{s3_bucket}/photos/{FLAKY}")
    for name in S3_ERRORS:
        fs.put_file(mixed_folder["grey.png"], f"{s3_bucket}/photos/{name}")
    output = str(tmp_path / "out")
    with dropping_proxy(s3_server.endpoint) as proxy:
        env = s3_server.env()
        env.pop("AWS_ENDPOINT_URL")
        # the store's retries, set low as a user may: the failure is reported in seconds, not minutes
        env["FSSPEC_S3"] = json.dumps(
            {"endpoint_url": proxy.endpoint, "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
        )
        args = [
            "--input",
            f"s3://{s3_bucket}/photos/",
            "--output",
            output,
            "--model",
            tiny_artifact,
            "--batch-size",
            "4",
            "--incremental",
        ]
        first = run_job("segment.py", *args, "--run-id", "first", env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "run first: 6 images, 0 skipped, 6 processed: 1 ok, 5 errors" in first.stdout
        proxy.failing = False
        second = run_job("segment.py", *args, "--run-id", "second", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    # the flaky file, the expired token and the throttled read are tried again; the denied one is not
    assert "run second: 6 images, 3 skipped, 3 processed: 1 ok, 2 errors" in second.stdout

    rows = delta_sql(
        output, "SELECT run_id, image_uri, status, error_kind, error FROM images ORDER BY run_id, image_uri"
    ).to_pylist()
    kinds = {(row["run_id"], row["image_uri"].rsplit("/", 1)[1]): (row["status"], row["error_kind"]) for row in rows}
    assert kinds == {
        ("first", "corrupt.png"): ("error", "invalid"),
        ("first", FLAKY): ("error", "transient"),
        ("first", "grey.png"): ("ok", None),
        ("second", FLAKY): ("ok", None),
        ("first", "expired.png"): ("error", "transient"),
        ("second", "expired.png"): ("error", "transient"),
        ("first", "throttled.png"): ("error", "transient"),
        ("second", "throttled.png"): ("error", "transient"),
        ("first", "denied.png"): ("error", "invalid"),
    }
    flaky_error = next(row["error"] for row in rows if row["run_id"] == "first" and row["image_uri"].endswith(FLAKY))
    assert flaky_error.startswith("cannot read file (")
    current = delta_sql(output, "SELECT image_uri, status, error_kind FROM current ORDER BY image_uri").to_pylist()
    assert [(r["image_uri"].rsplit("/", 1)[1], r["status"], r["error_kind"]) for r in current] == [
        ("corrupt.png", "error", "invalid"),
        ("denied.png", "error", "invalid"),
        ("expired.png", "error", "transient"),
        (FLAKY, "ok", None),
        ("grey.png", "ok", None),
        ("throttled.png", "error", "transient"),
    ]


def test_tables_of_an_earlier_version_gain_the_column_and_keep_their_rows(tmp_path):
    from deltalake import write_deltalake

    from jobs.output import readers as results
    from jobs.output import tables

    output = str(tmp_path / "out")
    earlier = {
        name: pa.schema([f for f in schema if f.name != "error_kind"]) for name, schema in tables.SCHEMAS.items()
    }
    for name, schema in earlier.items():
        write_deltalake(
            tables.delta_uri(output, name),
            schema.empty_table(),
            mode="append",
            partition_by=["run_id"] if name in tables.PARTITIONED else None,
        )
    row = {field.name: None for field in earlier["current"]}
    row.update(
        image_uri="file:///a.png",
        source_size=1,
        source_version="v1",
        status="error",
        error="bad",
        model_sha256="m",
        run_id="old",
        commit_version=1,
    )
    write_deltalake(
        tables.delta_uri(output, "current"), pa.Table.from_pylist([row], schema=earlier["current"]), mode="append"
    )
    tables.ensure_tables(output)
    for name, schema in tables.SCHEMAS.items():
        assert (
            "error_kind" in {f.name for f in tables.open_table(output, name).schema().fields}
            or "error_kind" not in schema.names
        )
    assert delta_sql(output, "SELECT image_uri, error_kind FROM current").to_pylist() == [
        {"image_uri": "file:///a.png", "error_kind": None}
    ]
    con = results.connect(output)  # the project's own reader, over the file written without the column
    assert con.execute("SELECT status, error_kind FROM current_images").fetchall() == [("error", None)]
