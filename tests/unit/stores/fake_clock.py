"""A clock for the embedded stores that moves only when a test says so."""

from __future__ import annotations

from datetime import UTC, datetime

# A Monday in the middle of a month: far from any month boundary.
START = datetime(2025, 3, 10, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """Callable like `time.time`; `advance` is awaitable to stand in for `asyncio.sleep`."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        """Move time forward (or back, when negative) at once."""
        self.now += seconds
