"""The listing reads a ListObjectsV2 page's keys itself (jobs/storage/list_pages.py): every page must
come out exactly as botocore reads it, through a real client against the suite's S3 server and on
pages shaped like AWS's (checksum fields, an owner)."""

import botocore.parsers
import botocore.session
import fsspec.asyn
import pytest

from jobs.common.private_apis import s3_pages
from jobs.common.private_apis import s3_error_check
from jobs.storage.list_pages import EVENT, read_keys_fast

AWKWARD = ["a b.png", "plus+sign.png", "amp&lt.png", "less<more>.png", "été.png", "100%.png", "quote\"'.png"]


def _pages(fs, bucket: str, **request) -> list[dict]:
    pages = s3_pages(fs, "list_objects_v2", Bucket=bucket, **request)
    found = []
    while True:
        try:
            page = fsspec.asyn.sync(fs.loop, pages.__anext__)
        except StopAsyncIteration:
            return found
        page.pop("ResponseMetadata")
        found.append(page)


def test_pages_read_as_botocore_reads_them(s3_server, s3_bucket):
    plain, fast = s3_server.filesystem(), s3_server.filesystem()
    names = AWKWARD + [f"in/{AWKWARD[0]}", f"in/{AWKWARD[1]}", f"in/deeper/{AWKWARD[2]}"]
    plain.pipe({f"{s3_bucket}/{name}": b"x" for name in names})
    read_keys_fast(fast.s3)
    parsed_bodies = []
    fast.s3.meta.events.register(EVENT, lambda response_dict, **_: parsed_bodies.append(response_dict["body"]))

    shapes = [  # (request, keys it lists): pages of 4 with continuation tokens, one folder level, a prefix
        ({"MaxKeys": 4}, len(names)),
        ({"Delimiter": "/", "MaxKeys": 4}, len(AWKWARD)),
        ({"Prefix": "in/"}, 3),
    ]
    for request, keys in shapes:
        expected, found = _pages(plain, s3_bucket, **request), _pages(fast, s3_bucket, **request)
        assert found == expected, request
        assert sum(len(page.get("Contents", [])) for page in found) == keys, request
    assert parsed_bodies and not any(b"<Contents>" in body for body in parsed_bodies)  # botocore saw no key


SESSION = botocore.session.get_session()  # loads the service model once for every client below


def _client(fast: bool):
    client = SESSION.create_client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    if fast:
        read_keys_fast(client)
    return client


def _before_parse(client, body: bytes) -> tuple[dict, dict]:
    """A 200 answer after the client's before-parse handlers: the answer, and what they add to the result."""
    response, custom = {"status_code": 200, "headers": {}, "body": body}, {}
    client.meta.events.emit(
        "before-parse.s3.ListObjectsV2",
        operation_model=client.meta.service_model.operation_model("ListObjectsV2"),
        response_dict=response,
        customized_response_dict=custom,
    )
    return response, custom


def _answer(client, body: bytes) -> tuple[dict, dict]:
    """What the client's endpoint does with a 200 answer: its before-parse handlers, then its parse."""
    response, custom = _before_parse(client, body)
    shape = client.meta.service_model.operation_model("ListObjectsV2").output_shape
    page = botocore.parsers.create_parser("rest-xml").parse(response, shape)
    page.update(custom)
    page.pop("ResponseMetadata")
    return response, page


def _aws_page(extra: bytes = b"") -> bytes:
    key = (
        b"<Contents><Key>photos/%d.jpg</Key><LastModified>2026-12-06T17:04:05.000Z</LastModified>"
        b"<ETag>&quot;9dd4e461268c8034f5c8564e155c67a6&quot;</ETag><ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm>"
        b"<ChecksumAlgorithm>SHA256</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType><Size>%d</Size>"
        b"<StorageClass>STANDARD</StorageClass>%s</Contents>"
    )
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name><Prefix>photos/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>"
        b"<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>"
        + key % (1, 10, b"")
        + key % (2, 20, extra)
        + b"<CommonPrefixes><Prefix>photos/more/</Prefix></CommonPrefixes></ListBucketResult>"
    )


def test_an_aws_page_with_checksums_reads_the_same():
    body = _aws_page()
    response, page = _answer(_client(fast=True), body)
    assert page == _answer(_client(fast=False), body)[1]
    assert b"Contents" not in response["body"]  # the keys were read by the listing
    assert page["Contents"][1]["ChecksumAlgorithm"] == ["CRC64NVME", "SHA256"] and page["Contents"][1]["Size"] == 20


def test_a_key_with_a_field_it_does_not_know_leaves_the_page_to_botocore():
    body = _aws_page(b"<Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID></Owner>")
    response, page = _answer(_client(fast=True), body)
    assert response["body"] is body
    assert page == _answer(_client(fast=False), body)[1] and page["Contents"][1]["Owner"]["ID"].startswith("75aa")


@pytest.mark.parametrize(
    "body",
    [
        b"<ListBucketResult><Contents><Key>cut",
        b"<Error><Code>SlowDown</Code></Error>",
        b'<?xml version="1.0" encoding="latin-1"?><ListBucketResult><Contents><Key>\xe9</Key></Contents></ListBucketResult>',
    ],
)
def test_an_error_in_a_200_answer_is_still_botocores_retried_500(body):
    # the answer S3 sends when a page is cut off or an error comes with a 200: botocore retries a 500
    response, custom = _before_parse(_client(fast=True), body)
    assert response == {"status_code": 500, "headers": {}, "body": body} and custom == {}


def _handlers(client) -> list[str]:
    """The names of the handlers a ListObjectsV2 answer meets before its parse, in the order they run
    (the emitter's own lookup; no public call lists them)."""
    found = client.meta.events._emitter._handlers.prefix_search("before-parse.s3.ListObjectsV2")
    return [handler.__name__ for handler in found]


def test_the_keys_are_taken_before_botocores_check_on_the_clients_the_listing_uses():
    import s3fs

    fs = s3fs.S3FileSystem(key="k", secret="s", endpoint_url="http://127.0.0.1:9", skip_instance_cache=True)
    client = fs.s3  # aiobotocore's, as every walk gets it; made without a request
    before = _handlers(client)
    assert before[0] == s3_error_check().__name__
    for _ in range(3):  # each walk on a cached filesystem registers again
        read_keys_fast(client)
        assert _handlers(client) == ["take_keys", *before]
    assert _handlers(s3fs.S3FileSystem(key="k", secret="s", skip_instance_cache=True).s3) == before
