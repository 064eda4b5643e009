"""Joining a Ray cluster, sizing work to what it holds or can grow to, waiting for nodes."""
