"""The S3 test server itself: it must outlast the suite on whatever disk CI gives it."""

import json
import urllib.request


def test_the_server_has_a_volume_for_far_more_buckets_than_the_suite_makes(s3_server, s3_bucket):
    """SeaweedFS gives each bucket a volume of its own and by default counts its volumes from the free disk:
    on a small CI disk the suite's later S3 tests then failed with an InternalError on every write."""
    s3_server.filesystem().pipe_file(f"{s3_bucket}/probe", b"x")
    topology = json.loads(urllib.request.urlopen(f"{s3_server.master}/dir/status", timeout=10).read())["Topology"]
    assert topology["Max"] - topology["Free"] >= 1  # the probe's bucket took a volume: the count is of volumes
    assert topology["Free"] >= 1000
