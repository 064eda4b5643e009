"""The results as Delta tables: schemas, the run commit and its roll-forward, leases, readers over
the committed files, the incremental selection, maintenance, legacy conversion."""
