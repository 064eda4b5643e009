"""Errors that callers catch without needing TensorFlow loaded."""


class ArtifactError(ValueError):
    """The artifact is missing, malformed or unsafe to load; the message says which."""
