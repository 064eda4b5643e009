"""The names a training recipe chooses from. Importing this module loads no TensorFlow, so a command
can offer them as choices (and answer `--help`) without paying TensorFlow's import."""

LOSSES = ("ce", "dice", "ce+dice", "focal")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "poly", "constant")
NORMALIZATIONS = ("none", "batch", "group")
"""After each 3x3 convolution, before its ReLU. "none" is the seed's graph."""
