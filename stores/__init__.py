"""State that outlives a request and is shared by replicas: tenants and API keys, usage,
rate limits, secrets. No Ray, no HTTP. Each store has an embedded default (what
`make serve` runs) and a production backend behind the same interface."""
