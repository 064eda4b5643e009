"""The private APIs of s3fs, botocore and Ray the project relies on, each called for real: an upgrade that
removes or changes one fails here by name, not deep inside a run."""

import datetime as dt
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.common.private_apis import (
    iso_timestamp,
    parse_timestamps_fast,
    quiet_ray_train_reports,
    s3_call,
    s3_error_check,
    s3_pages,
)
from jobs.storage.files import filesystem


def test_s3fs_call_sends_a_conditional_put(s3_server, s3_bucket):
    fs = s3_server.filesystem()
    request = {"Bucket": s3_bucket, "Key": "once", "Body": b"first", "IfNoneMatch": "*"}
    assert "ETag" in s3_call(fs, "put_object", **request)
    with pytest.raises(OSError):  # the store refuses the second create: 412, mapped by s3fs
        s3_call(fs, "put_object", **{**request, "Body": b"second"})
    assert fs.cat_file(f"{s3_bucket}/once") == b"first"


def test_s3fs_pages_come_one_at_a_time(s3_server, s3_bucket):
    import fsspec.asyn

    fs = s3_server.filesystem()
    for index in range(3):
        fs.pipe_file(f"{s3_bucket}/p/{index}.png", b"x")
    pages = s3_pages(fs, "list_objects_v2", Bucket=s3_bucket, Prefix="p/", MaxKeys=2)
    first = fsspec.asyn.sync(fs.loop, pages.__anext__)
    second = fsspec.asyn.sync(fs.loop, pages.__anext__)
    assert [item["Key"] for item in first["Contents"]] == ["p/0.png", "p/1.png"]
    assert [item["Key"] for item in second["Contents"]] == ["p/2.png"]


def test_local_filesystems_need_none_of_them(tmp_path):
    fs, _ = filesystem(str(tmp_path))
    assert not hasattr(fs, "_call_s3")


RAY_PROBE = """
import ray
from jobs.common.private_apis import ray_cluster_config, ray_head_started_here
assert not ray_head_started_here()
ray.init(address="local", num_cpus=1, include_dashboard=False)
assert ray_head_started_here()
config = ray_cluster_config()
assert config is None or hasattr(config, "node_group_configs"), type(config)
print("ok")
"""


@pytest.mark.ray
def test_ray_private_state_answers_in_a_ray_it_started():
    done = subprocess.run(
        [sys.executable, "-c", RAY_PROBE],
        capture_output=True,
        text=True,
        timeout=180,
        env={"RAY_AUTH_MODE": "disabled", **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}},
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_the_loggers_of_ray_train_reports_are_the_ones_quieted():
    # the train job's own output shows the effect: tests/test_train_job.py finds no report lines
    import ray.train.v2._internal.execution.context as context
    import ray.train.v2._internal.execution.storage as storage

    quiet_ray_train_reports()
    assert "Reporting training result" in Path(context.__file__).read_text()
    assert "Checkpoint successfully created" in Path(storage.__file__).read_text()
    assert not context.logger.isEnabledFor(logging.INFO) and not storage.logger.isEnabledFor(logging.INFO)


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-06T17:04:05.000Z",
        "2026-12-06T17:04:05Z",
        "2026-12-06T17:04:05.123456+02:00",
        "Sun, 06 Dec 2026 17:04:05 GMT",
    ],
)
def test_timestamps_read_as_botocore_reads_them(value):
    from botocore.utils import parse_timestamp

    assert iso_timestamp(value) == parse_timestamp(value)


def test_clients_made_after_the_switch_read_listed_times_with_it():
    import botocore.parsers
    import botocore.session

    before = botocore.parsers.DEFAULT_TIMESTAMP_PARSER
    try:
        parse_timestamps_fast()
        body = (
            b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>'
            b"<Contents><Key>a.png</Key><LastModified>2026-12-06T17:04:05.000Z</LastModified>"
            b"<ETag>&quot;e&quot;</ETag><Size>3</Size></Contents></ListBucketResult>"
        )
        shape = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2").output_shape
        parser = botocore.parsers.create_parser("rest-xml")
        page = parser.parse({"status_code": 200, "headers": {}, "body": body}, shape)
    finally:
        botocore.parsers.DEFAULT_TIMESTAMP_PARSER = before
    modified = page["Contents"][0]["LastModified"]
    assert modified.tzinfo is dt.timezone.utc  # the standard library's zone: dateutil's would be tzutc()
    assert modified == dt.datetime(2026, 12, 6, 17, 4, 5, tzinfo=dt.timezone.utc)


def test_botocore_checks_s3_answers_with_the_handler_the_listing_moves():
    import botocore.handlers

    assert (
        "before-parse.s3.*",
        s3_error_check(),
        botocore.handlers.REGISTER_FIRST,
    ) in botocore.handlers.BUILTIN_HANDLERS
    operation = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2")
    answer = {"status_code": 200, "headers": {}, "body": b"<Error><Code>InternalError</Code></Error>"}
    s3_error_check()(operation_model=operation, response_dict=answer)
    assert answer["status_code"] == 500
