"""The embedded limiter's monthly quota with its counts in the registry (SQLite, as
`make serve` runs it, and PostgreSQL): it holds across a restart and across replicas on
the same database, and a store that fails leaves the quota counted in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from stores._ratelimit import month_key
from stores.ratelimit_embedded import EmbeddedLimiter
from stores.registry_sql import SqlRegistry, open_registry
from stores.tenants import RateLimits
from tests.unit.stores.fake_clock import START, FakeClock

QUOTA = RateLimits(monthly_texts=10)
HOUR = 3600.0  # no background sync during a test: each one is called by the test


@pytest.fixture
def registry(url: str) -> Iterator[SqlRegistry]:
    reg = open_registry(url)
    yield reg
    reg.close()


def test_a_used_up_quota_holds_after_a_restart(registry: SqlRegistry) -> None:
    async def body() -> None:
        first = EmbeddedLimiter(FakeClock(), counts=registry, sync_s=HOUR)
        assert (await first.admit("tn_a", QUOTA, 7)).allowed
        assert (await first.admit("tn_a", QUOTA, 3)).allowed
        await first.close()  # a replica stopping stores what it admitted
        again = EmbeddedLimiter(FakeClock(), counts=registry, sync_s=HOUR)
        refused = await again.admit("tn_a", QUOTA, 1)
        assert not refused.allowed
        assert (await again.admit("tn_b", QUOTA, 10)).allowed  # another subject's own
        await again.close()

    asyncio.run(body())
    assert registry.month_texts(month_key(START)) == {"tn_a": 10, "tn_b": 10}


def test_replicas_on_one_database_share_the_quota(registry: SqlRegistry) -> None:
    async def body() -> None:
        a = EmbeddedLimiter(FakeClock(), counts=registry, sync_s=HOUR)
        b = EmbeddedLimiter(FakeClock(), counts=registry, sync_s=HOUR)
        assert (await a.admit("tn_a", QUOTA, 6)).allowed
        assert await a.sync()
        # b's first decision of the month loads what is stored: 6 of 10 used.
        assert not (await b.admit("tn_a", QUOTA, 5)).allowed
        assert (await b.admit("tn_a", QUOTA, 4)).allowed
        assert await b.sync()
        assert await a.sync()
        assert not (await a.admit("tn_a", QUOTA, 1)).allowed
        await a.close()
        await b.close()

    asyncio.run(body())
    assert registry.month_texts(month_key(START)) == {"tn_a": 10}


class _Failing:
    """A store of counts that does not answer until told to."""

    def __init__(self, inner: SqlRegistry) -> None:
        self.inner = inner
        self.down = True

    def add_month_texts(self, counts: dict[tuple[int, str], int]) -> None:
        if self.down:
            raise ConnectionError("registry down")
        self.inner.add_month_texts(counts)

    def month_texts(self, month: int) -> dict[str, int]:
        if self.down:
            raise ConnectionError("registry down")
        return self.inner.month_texts(month)


def test_a_store_that_fails_leaves_the_quota_counted_in_memory(
    registry: SqlRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    store = _Failing(registry)

    async def body() -> None:
        limiter = EmbeddedLimiter(FakeClock(), counts=store, sync_s=HOUR)
        assert (await limiter.admit("tn_a", QUOTA, 8)).allowed
        assert not (await limiter.admit("tn_a", QUOTA, 3)).allowed  # memory still counts
        assert not await limiter.sync()
        assert not await limiter.sync()
        store.down = False
        assert await limiter.sync()  # the 8 admitted while it was down, stored once
        assert await limiter.sync()
        assert (await limiter.admit("tn_a", QUOTA, 2)).allowed
        await limiter.close()

    asyncio.run(body())
    assert registry.month_texts(month_key(START)) == {"tn_a": 10}
    warnings = [r.getMessage() for r in caplog.records if "quota counts" in r.getMessage()]
    assert warnings == [
        "monthly quota counts not stored (ConnectionError); counting in memory",
        "monthly quota counts stored again",
    ]


def test_a_new_month_starts_from_zero_and_the_last_one_is_still_stored(
    registry: SqlRegistry,
) -> None:
    clock = FakeClock(datetime(2025, 3, 31, 23, 59, 50, tzinfo=UTC).timestamp())

    async def body() -> None:
        limiter = EmbeddedLimiter(clock, counts=registry, sync_s=HOUR)
        assert (await limiter.admit("tn_a", QUOTA, 10)).allowed
        assert not (await limiter.admit("tn_a", QUOTA, 1)).allowed
        await clock.advance(20)
        assert (await limiter.admit("tn_a", QUOTA, 4)).allowed
        await limiter.close()

    asyncio.run(body())
    assert registry.month_texts(202503) == {"tn_a": 10}
    assert registry.month_texts(202504) == {"tn_a": 4}


def test_the_background_sync_stores_what_was_admitted(registry: SqlRegistry) -> None:
    async def body() -> None:
        limiter = EmbeddedLimiter(FakeClock(), counts=registry, sync_s=0.05)
        assert (await limiter.admit("tn_a", QUOTA, 3)).allowed
        for _ in range(100):
            if registry.month_texts(month_key(START)) == {"tn_a": 3}:
                break
            await asyncio.sleep(0.02)
        assert registry.month_texts(month_key(START)) == {"tn_a": 3}
        await limiter.close()

    asyncio.run(body())
    assert registry.month_texts(month_key(START)) == {"tn_a": 3}


class _Slow:
    """A store of counts that takes a while to answer (a busy database)."""

    def __init__(self, inner: SqlRegistry, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def add_month_texts(self, counts: dict[tuple[int, str], int]) -> None:
        import time

        time.sleep(self.seconds)
        self.inner.add_month_texts(counts)

    def month_texts(self, month: int) -> dict[str, int]:
        return self.inner.month_texts(month)


def test_requests_arriving_while_the_month_loads_wait_for_the_same_load(
    registry: SqlRegistry,
) -> None:
    registry.add_month_texts({(month_key(START), "tn_a"): 10})  # used up before a restart
    store = _Slow(registry, 0.2)

    async def body() -> list[bool]:
        limiter = EmbeddedLimiter(FakeClock(), counts=store, sync_s=HOUR)
        decisions = await asyncio.gather(*(limiter.admit("tn_a", QUOTA, 1) for _ in range(20)))
        await limiter.close()
        return [d.allowed for d in decisions]

    assert asyncio.run(body()) == [False] * 20
    assert registry.month_texts(month_key(START)) == {"tn_a": 10}


def test_closing_during_a_sync_stores_each_text_once(registry: SqlRegistry) -> None:
    store = _Slow(registry, 0.3)

    async def body() -> None:
        limiter = EmbeddedLimiter(FakeClock(), counts=store, sync_s=0.05)
        assert (await limiter.admit("tn_a", QUOTA, 1)).allowed  # loads (0.3 s), then counts
        assert (await limiter.admit("tn_a", QUOTA, 9)).allowed
        await asyncio.sleep(0.15)  # the background sync is storing the 10 now
        await limiter.close()

    asyncio.run(body())
    assert registry.month_texts(month_key(START)) == {"tn_a": 10}


class _ReadFails:
    """A store of counts whose next reads fail after the add before them committed."""

    def __init__(self, inner: SqlRegistry) -> None:
        self.inner = inner
        self.failing_reads = 0

    def add_month_texts(self, counts: dict[tuple[int, str], int]) -> None:
        self.inner.add_month_texts(counts)

    def month_texts(self, month: int) -> dict[str, int]:
        if self.failing_reads:
            self.failing_reads -= 1
            raise ConnectionError("connection reset")
        return self.inner.month_texts(month)


def test_counts_stored_before_a_failed_read_are_not_stored_again(
    registry: SqlRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    store = _ReadFails(registry)

    async def body() -> None:
        limiter = EmbeddedLimiter(FakeClock(), counts=store, sync_s=HOUR)
        assert (await limiter.admit("tn_a", QUOTA, 6)).allowed
        store.failing_reads = 1
        assert not await limiter.sync()  # the 6 were added; reading them back failed
        assert not (await limiter.admit("tn_a", QUOTA, 5)).allowed  # the 6 still count
        assert await limiter.sync()
        assert (await limiter.admit("tn_a", QUOTA, 4)).allowed
        await limiter.close()

    asyncio.run(body())
    assert registry.month_texts(month_key(START)) == {"tn_a": 10}
    warnings = [r.getMessage() for r in caplog.records if "quota counts" in r.getMessage()]
    assert warnings == [
        "monthly quota counts stored but not read back (ConnectionError); counting in memory",
        "monthly quota counts stored again",
    ]
