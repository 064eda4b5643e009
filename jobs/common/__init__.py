"""The error every layer raises for a problem the user can fix, and credential redaction."""
