"""What the commands share: argument types, flag groups and the one-line error mapping."""
