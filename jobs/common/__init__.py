"""What every layer shares: the user error, credential redaction, and the one adapter over the
private APIs of s3fs and Ray."""
