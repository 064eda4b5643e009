"""Data-parallel training on Ray Train: config, data, the worker loop and its checkpoints, the driver."""
