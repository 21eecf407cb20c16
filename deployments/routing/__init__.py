"""Which version serves a request: traffic split, sticky keys, shadow copies and canary
watch. Plain Python: nothing here imports Ray."""
