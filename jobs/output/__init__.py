"""The results as Delta tables: schemas, the run commit and its roll-forward, leases, run plans and
part files (what a resumed run keeps), readers over the committed files, the incremental selection,
maintenance, legacy conversion."""
