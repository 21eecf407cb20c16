"""Metrics and JSON logs of every replica."""
