"""The embedding cache's Redis tier read, per text, against a local redis-server the
script starts: `get_many` (one `MGET`) and `get_many_with_ttl` (the script answering
each key's value and time left, what a replica keeping a memory copy calls), for
lookups of 1, 32 and 256 texts of MiniLM-sized vectors.

    .venv/bin/python bench/cache_read.py

Prints one line per call and size: microseconds a text, best and median of 5 runs.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stores.embed_cache import Cached, cache_keys
from stores.embed_cache_redis import RedisStore
from tests.conftest import free_port
from tests.redis_server import RedisServer

SIZES = (1, 32, 256)
RUNS = 5


async def measure(url: str) -> None:
    store = RedisStore(url)
    vector = np.random.default_rng(0).random(384, dtype=np.float32).tobytes()
    for n in SIZES:
        keys = cache_keys("acme", "minilm/v1", [f"text {n} {i}" for i in range(n)])
        await store.put_many([(key, Cached(vector, 12)) for key in keys], 3600)
        for name in ("get_many", "get_many_with_ttl"):
            call = getattr(store, name)
            for _ in range(50):  # warm the connection and the script cache
                await call(keys)
            rounds = max(50, 12800 // n)
            per_text = []
            for _ in range(RUNS):
                started = time.perf_counter()
                for _ in range(rounds):
                    await call(keys)
                per_text.append((time.perf_counter() - started) / rounds / n * 1e6)
            print(
                f"{name:18s} {n:4d} texts  {min(per_text):6.1f} us/text"
                f"  (median {statistics.median(per_text):.1f})",
                flush=True,
            )
    await store.close()


def main() -> None:
    server = RedisServer(free_port()).start()
    try:
        asyncio.run(measure(server.url))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
