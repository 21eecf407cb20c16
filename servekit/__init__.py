"""servekit: production model serving on Ray Serve."""
