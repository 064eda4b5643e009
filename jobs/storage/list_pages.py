"""ListObjectsV2 pages read in one pass of the standard library's XML parser.

botocore reads each listed key by walking its service model (a shape lookup, a name-to-node map and
a type handler per field): 54 ms of CPU for a page of 1,000 keys, where parsing the page and taking
the few fields a key has costs 5 ms (bench/listing.py). A listing of millions of keys is bound by
that CPU, so the listing reads the keys itself, on botocore's own `before-parse` event: the keys go
into the response as botocore would have read them, and botocore checks and parses the rest of the
page (the continuation token, the folders), which is small. A key with a field this module does not know
(`Owner`, `RestoreStatus`: asked for, never in the listing's pages) leaves its page to botocore.
Times are read by the standard library (`iso_timestamp`), equal to botocore's reading. The handler
stays with the client, so every ListObjectsV2 of that filesystem (s3fs' `ls`, `find`) reads its
keys this way from then on, to the same result.
"""

from __future__ import annotations

import contextlib
import gc
import xml.etree.ElementTree as ElementTree
from typing import Any, Callable, Iterator

from jobs.common.private_apis import iso_timestamp, s3_error_check

EVENT = "before-parse.s3.*"  # where botocore registers its check of 200 answers
HANDLER_ID = "jobs.storage.list_pages"
NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"
READERS: dict[str, Callable[[str], Any]] = {
    "Key": str,
    "LastModified": iso_timestamp,
    "ETag": str,
    "ChecksumAlgorithm": list,  # botocore's flattened list: one element per entry
    "ChecksumType": str,
    "Size": int,
    "StorageClass": str,
}
FIELDS = {f"{space}{name}": (name, read) for name, read in READERS.items() for space in ("", NAMESPACE)}
CONTENTS = frozenset({"Contents", f"{NAMESPACE}Contents"})


def read_keys_fast(client: Any) -> None:
    """Have `client` read the keys of its ListObjectsV2 pages with `take_keys` (once per client).
    Its handlers run in order, and botocore's check for an error inside a 200 answer parses the
    whole page too: it moves behind `take_keys`, which leaves it every body that is no page."""
    events, check = client.meta.events, s3_error_check()
    events.unregister(EVENT, check)
    events.register_first(EVENT, take_keys, unique_id=HANDLER_ID)
    events.register_first(EVENT, check)


def take_keys(response_dict: dict, customized_response_dict: dict, operation_model: Any, **_: Any) -> None:
    """Moves a page's keys from the body botocore is about to parse into the fields it adds to its
    result. A body that does not parse, or parses to anything but a page, is left as it came for
    botocore's check (which turns it into a retried 500) and parser."""
    body = response_dict.get("body")
    if operation_model.name != "ListObjectsV2" or response_dict.get("status_code") != 200 or not body:
        return
    with collector_paused():
        try:
            root = _parsed(body)
        except (ElementTree.ParseError, LookupError, ValueError):
            return
        entries = [element for element in root if element.tag in CONTENTS]
        keys = [_key(entry) for entry in entries]
    if not entries or any(key is None for key in keys):
        return
    for entry in entries:
        root.remove(entry)
    response_dict["body"] = ElementTree.tostring(root)
    customized_response_dict["Contents"] = keys


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """A page is some 8,000 short-lived XML elements. Each batch of them starts a collection by
    CPython's cycle collector, and in the driver (some 140,000 long-lived objects of Ray, Arrow and
    botocore) those were two thirds of the page's CPU (measured). The elements hold no cycles, so
    they are freed as soon as the page is read, collector or not. The switch is the process's: a
    thread that turns the collector off meanwhile finds it on again after the page."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parsed(body: bytes) -> ElementTree.Element:
    """The page as botocore parses it: as UTF-8, whatever the body declares."""
    parser = ElementTree.XMLParser(target=ElementTree.TreeBuilder(), encoding="utf-8")
    parser.feed(body)
    return parser.close()


def _key(entry: ElementTree.Element) -> dict | None:
    """One listed key as botocore's model reads it, or None for a field outside the known ones."""
    key: dict[str, Any] = {}
    for field in entry:
        known = FIELDS.get(field.tag)
        if known is None or len(field):
            return None
        name, read = known
        if read is list:
            key.setdefault(name, []).append(field.text or "")
        else:
            key[name] = read(field.text or "")
    return key
