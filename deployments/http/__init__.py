"""The HTTP layer: the ASGI envelope (request id, bounded body reading, error mapping,
access line and metrics) and the protocol adapters, which only parse and encode."""
