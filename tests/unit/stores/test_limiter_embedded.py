"""What only the embedded limiter promises: exact waits, the month turning over on its
clock, and memory that does not grow with idle subjects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from stores._ratelimit import Bucket, check_bucket, decide
from stores.ratelimit_embedded import EmbeddedLimiter
from stores.tenants import RateLimits
from tests.unit.stores.fake_clock import FakeClock


def test_the_wait_is_exact() -> None:
    clock = FakeClock(0.0)  # near zero, where a float clock resolves far below a microsecond
    limiter = EmbeddedLimiter(clock)
    limits = RateLimits(requests_per_s=3, texts_per_s=7)

    async def body() -> None:
        for _ in range(3):
            assert (await limiter.admit("tn_a", limits, 2)).allowed
        refused = await limiter.admit("tn_a", limits, 2)
        assert not refused.allowed
        await clock.advance(refused.retry_after_s * 0.999)
        assert not (await limiter.admit("tn_a", limits, 2)).allowed
        await clock.advance(refused.retry_after_s * 0.001)
        assert (await limiter.admit("tn_a", limits, 2)).allowed

    asyncio.run(body())


def test_a_take_larger_than_the_bucket_is_too_large_at_any_level() -> None:
    """`admit` refuses it before reading a bucket; the bucket's own check agrees, with
    no wait and the level left as it was."""
    for level in (None, Bucket(0.0, 10.0), Bucket(2.5, 10.0)):
        check, after = check_bucket("texts", 5.0, level, 10.0, 6)
        assert (check.too_large, check.wait_s, check.limit) == (True, 0.0, 5.0)
        assert after.tokens == (5.0 if level is None else level.tokens)
        assert decide([check]).too_large
    fits = check_bucket("texts", 5.0, Bucket(0.0, 10.0), 10.0, 5)[0]  # a wait, not never
    assert (fits.too_large, fits.wait_s) == (False, 1.0)
    assert decide([fits, check]).retry_after_s == 0  # never wins over any wait


def test_the_month_turns_over_at_midnight_utc() -> None:
    clock = FakeClock(datetime(2024, 12, 31, 23, 59, 50, tzinfo=UTC).timestamp())
    limiter = EmbeddedLimiter(clock)
    limits = RateLimits(monthly_texts=10)

    async def body() -> None:
        assert (await limiter.admit("tn_a", limits, 10)).allowed
        refused = await limiter.admit("tn_a", limits, 1)
        assert (refused.allowed, refused.retry_after_s) == (False, 10.0)
        await clock.advance(9.5)
        # The wait never says less than a second, even right before the month ends.
        assert (await limiter.admit("tn_a", limits, 1)).retry_after_s == 1.0
        await clock.advance(0.5)
        allowed = await limiter.admit("tn_a", limits, 10)
        assert (allowed.allowed, allowed.remaining) == (True, 0)
        assert allowed.reset_s == 31 * 86400  # January

    asyncio.run(body())


def test_idle_subjects_are_dropped_but_their_month_is_kept() -> None:
    clock = FakeClock()
    limiter = EmbeddedLimiter(clock)
    limits = RateLimits(requests_per_s=1, texts_per_s=100, monthly_texts=5)

    async def body() -> None:
        for i in range(100):
            assert (await limiter.admit(f"tn_{i}", limits, 5)).allowed
        assert len(limiter) == 100
        await clock.advance(1.0)  # every bucket is full again
        for _ in range(20):
            await limiter.admit("tn_busy", RateLimits(texts_per_s=1), 0)
        assert len(limiter) == 0
        # The buckets were forgotten, the month was not.
        refused = await limiter.admit("tn_0", limits, 1)
        assert (refused.allowed, refused.policy) == (False, "monthly")

    asyncio.run(body())


def test_a_clock_that_steps_back_refills_nothing() -> None:
    clock = FakeClock()
    limiter = EmbeddedLimiter(clock)
    limits = RateLimits(requests_per_s=1)

    async def body() -> None:
        assert (await limiter.admit("tn_a", limits, 0)).allowed
        await clock.advance(-5.0)
        refused = await limiter.admit("tn_a", limits, 0)
        assert not refused.allowed
        assert refused.retry_after_s == 1.0  # a lowered bucket waits no more than a fill

    asyncio.run(body())
