"""A segmentation run on Ray Data: its config, the model facts, the stages, the pipeline, the run."""
