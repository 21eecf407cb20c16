"""Steady background HTTP load for rollout and failover tests, with exact counts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import auth_headers


@dataclass
class LoadResult:
    """What the load saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    versions: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Requests sent."""
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def non_2xx(self) -> int:
        """Answers other than 2xx."""
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    def summary(self) -> str:
        """One line for the test report."""
        return (
            f"{self.total} requests, {self.non_2xx} non-2xx, "
            f"{sum(self.errors.values())} connection errors, statuses {dict(self.statuses)}"
        )


class SteadyLoad:
    """`concurrency` workers posting embeddings in a loop until stopped."""

    def __init__(
        self, base_url: str, concurrency: int = 6, pause_s: float = 0.02, timeout_s: float = 60
    ) -> None:
        self.base_url = base_url
        self.concurrency = concurrency
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        """Stop and wait for in-flight requests to finish."""
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 10)
        return self.result

    def versions_since(self, since: float) -> Counter[str]:
        """Versions that answered after a point in time."""
        return Counter(v for t, v in list(self.result.versions) if t >= since)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout_s, limits=limits, headers=auth_headers()
        ) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            body = {"model": "minilm", "input": [f"steady load {worker} {n}"]}
            try:
                r = await client.post("/v1/embeddings", json=body)
            except httpx.HTTPError as e:
                self.result.errors[type(e).__name__] += 1
                self.result.failures.append((time.monotonic(), type(e).__name__))
            else:
                self.result.statuses[r.status_code] += 1
                if r.status_code == 200:
                    self.result.versions.append((time.monotonic(), r.headers["x-model-version"]))
                else:
                    self.result.failures.append(
                        (time.monotonic(), f"{r.status_code} {r.text[:200]}")
                    )
            await asyncio.sleep(self.pause_s)
