"""Data-parallel training on Ray Train (config, labelled data, the worker loop and its checkpoints,\nthe driver) and scoring a model on labelled data."""
