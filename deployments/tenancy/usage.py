"""Usage metering: requests, texts and errors per tenant, model and UTC day, counted in
memory on the request path and written to the registry in batches, off the event loop.
A failed write keeps its counts for the next one; `flush()` at shutdown writes the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime
from logging import Logger

from stores.tenants import Registry, UsageRow

_Key = tuple[str, str, date]


def _today() -> date:
    return datetime.now(UTC).date()


class UsageMeter:
    """Counts per (tenant, model, day); `run()` writes them every `flush_s`."""

    def __init__(
        self,
        registry: Registry,
        flush_s: float,
        log: Logger,
        today: Callable[[], date] = _today,
    ) -> None:
        self.registry = registry
        self.flush_s = flush_s
        self.log = log
        self.today = today
        self._counts: dict[_Key, list[int]] = {}
        self._lock = asyncio.Lock()

    def add(self, tenant: str, model: str, texts: int, error: bool) -> None:
        """Count one answered request (its texts count only when it succeeded)."""
        key = (tenant, model, self.today())
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0, 0, 0]
        counts[0] += 1
        if error:
            counts[2] += 1
        else:
            counts[1] += texts

    async def flush(self) -> None:
        """Write what was counted since the last flush; on failure keep it."""
        async with self._lock:
            counts, self._counts = self._counts, {}
            if not counts:
                return
            rows = [UsageRow(t, m, d, c[0], c[1], c[2]) for (t, m, d), c in counts.items()]
            try:
                await asyncio.to_thread(self.registry.add_usage, rows)
            except Exception as e:
                for key, c in counts.items():
                    kept = self._counts.setdefault(key, [0, 0, 0])
                    for i in range(3):
                        kept[i] += c[i]
                self.log.warning(
                    "usage not written yet; kept for the next flush",
                    extra={"fields": {"rows": len(rows), "error": type(e).__name__}},
                )

    async def run(self) -> None:
        """Flush every `flush_s` until cancelled."""
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    def pending(self) -> int:
        """Requests counted but not yet written."""
        return sum(c[0] for c in self._counts.values())
