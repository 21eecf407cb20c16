"""servekit configuration: the pydantic schema of serve_config.yaml args, and loaders."""
