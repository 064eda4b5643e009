"""A segmentation run on Ray Data: model facts, the stages, the pipeline and evaluation."""
