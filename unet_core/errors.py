"""Errors that callers catch without needing TensorFlow loaded."""


class ArtifactError(ValueError):
    """The artifact is missing, malformed or unsafe to load; the message says which."""


class UnsafeModelError(ArtifactError):
    """The model file carries code (a Lambda layer), which Keras' safe mode refuses to load."""
