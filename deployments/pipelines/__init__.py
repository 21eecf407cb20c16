"""Pipelines over the data plane (search, later recommend): plain Python, no Ray."""
