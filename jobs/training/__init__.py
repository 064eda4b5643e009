"""Data-parallel training on Ray Train (config, labelled data, the worker loop and its checkpoints,
the driver), and scoring a model on labelled data."""
