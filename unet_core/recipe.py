"""The names a training recipe chooses from. Importing this module loads no TensorFlow, so a command
can offer them as choices (and answer `--help`) without paying TensorFlow's import."""

LOSSES = ("ce", "dice", "ce+dice", "focal")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "poly", "constant")
