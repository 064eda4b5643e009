"""URIs, S3 settings, listing collections and bounded reads, on local disk or any fsspec store."""
