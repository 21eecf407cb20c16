"""Who is calling and what they may do: API keys, scopes, quotas and usage metering
for the data plane. Plain Python over `stores/`; no Ray, no HTTP."""
