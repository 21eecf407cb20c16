"""Version backends: every way a model version runs (inline in the Ingress replica, or a
dedicated deployment) behind one contract, `VersionBackend`."""
