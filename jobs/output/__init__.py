"""The results as Delta tables: schemas, the run commit, leases, maintenance, legacy conversion."""
