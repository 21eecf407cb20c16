"""One contract, both limiters: the embedded one on an injected clock, the Redis one on a
real redis-server and real (short) waits. Where real time passes during a test, the
assertions allow for exactly the time measured."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from stores._ratelimit import BLOCKED_RETRY_S, next_month_start
from stores.ratelimit import ALLOWED, Limiter
from stores.ratelimit_embedded import EmbeddedLimiter
from stores.ratelimit_redis import RedisLimiter
from stores.tenants import RateLimits
from tests.unit.stores.fake_clock import FakeClock


@dataclass
class Backend:
    """How a test makes a limiter of one kind and lets time pass for it."""

    name: str
    make: Callable[[], Limiter]
    now: Callable[[], float]
    advance: Callable[[float], Awaitable[None]]

    def run(self, body: Callable[[Limiter], Awaitable[None]]) -> None:
        """Run `body` with a fresh limiter in a new event loop, closing it after."""

        async def main() -> None:
            limiter = self.make()
            try:
                await body(limiter)
            finally:
                await limiter.close()

        asyncio.run(main())


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "embedded":
        clock = FakeClock()
        return Backend("embedded", lambda: EmbeddedLimiter(clock), clock, clock.advance)
    url: str = request.getfixturevalue("redis_url")
    # A patient timeout: the contract is not about timeouts, and this machine may be busy.
    return Backend("redis", lambda: RedisLimiter(url, timeout_s=1.0), time.time, asyncio.sleep)


@pytest.fixture
def subject() -> str:
    """A subject no other test uses (the Redis server is shared by the session)."""
    return f"tn_{uuid.uuid4().hex[:12]}"


def assert_wait(backend: Backend, got: float, exact: float, since: float) -> None:
    """`got` is the wait that was `exact` at `since`, less at most the time passed since."""
    passed = backend.now() - since
    assert exact - passed - 1e-6 <= got <= exact + 1e-6, (got, exact, passed)


def test_burst_up_to_capacity_then_refused_with_retry_after(backend: Backend, subject: str) -> None:
    limits = RateLimits(requests_per_s=4)  # holds 4; one more every 0.25 s

    async def body(limiter: Limiter) -> None:
        since = backend.now()
        first = await limiter.admit(subject, limits, 1)
        assert (first.allowed, first.policy, first.limit) == (True, "requests", 4)
        assert first.remaining == pytest.approx(3, abs=0.1)
        assert_wait(backend, first.reset_s, 0.25, since)
        for _ in range(3):
            assert (await limiter.admit(subject, limits, 1)).allowed
        refused = await limiter.admit(subject, limits, 1)
        assert (refused.allowed, refused.policy) == (False, "requests")
        assert_wait(backend, refused.retry_after_s, 0.25, since)

    backend.run(body)


def test_refills_over_time(backend: Backend, subject: str) -> None:
    limits = RateLimits(requests_per_s=5)

    async def body(limiter: Limiter) -> None:
        for _ in range(5):
            assert (await limiter.admit(subject, limits, 0)).allowed
        refused = await limiter.admit(subject, limits, 0)
        assert not refused.allowed
        await backend.advance(refused.retry_after_s + 0.02)
        assert (await limiter.admit(subject, limits, 0)).allowed
        again = await limiter.admit(subject, limits, 0)
        assert not again.allowed
        assert 0 < again.retry_after_s <= 0.2

    backend.run(body)


def test_a_texts_refusal_takes_no_request(backend: Backend, subject: str) -> None:
    limits = RateLimits(requests_per_s=2, texts_per_s=10)

    async def body(limiter: Limiter) -> None:
        since = backend.now()
        assert (await limiter.admit(subject, limits, 8)).allowed
        refused = await limiter.admit(subject, limits, 5)
        assert (refused.allowed, refused.policy) == (False, "texts")
        assert_wait(backend, refused.retry_after_s, 0.3, since)
        # The refusal left the second request token and the texts where they were.
        assert (await limiter.admit(subject, limits, 2)).allowed
        last = await limiter.admit(subject, limits, 0)
        assert (last.allowed, last.policy) == (False, "requests")

    backend.run(body)


def test_a_monthly_refusal_takes_nothing(backend: Backend, subject: str) -> None:
    limits = RateLimits(requests_per_s=2, monthly_texts=3)

    async def body(limiter: Limiter) -> None:
        refused = await limiter.admit(subject, limits, 4)
        assert (refused.allowed, refused.policy) == (False, "monthly")
        allowed = await limiter.admit(subject, limits, 3)
        assert (allowed.allowed, allowed.policy, allowed.remaining) == (True, "monthly", 0)
        assert (await limiter.admit(subject, limits, 0)).allowed  # the second request
        assert (await limiter.admit(subject, limits, 0)).policy == "requests"

    backend.run(body)


def test_monthly_quota_exhausted_until_next_month(backend: Backend, subject: str) -> None:
    limits = RateLimits(monthly_texts=5)

    async def body(limiter: Limiter) -> None:
        first = await limiter.admit(subject, limits, 3)
        until_next = next_month_start(backend.now()) - backend.now()
        assert (first.allowed, first.policy, first.limit, first.remaining) == (
            True,
            "monthly",
            5,
            2,
        )
        assert first.reset_s == pytest.approx(until_next, abs=1)
        refused = await limiter.admit(subject, limits, 3)
        assert (refused.allowed, refused.policy) == (False, "monthly")
        assert refused.retry_after_s == pytest.approx(until_next, abs=1)
        assert (await limiter.admit(subject, limits, 2)).allowed
        assert not (await limiter.admit(subject, limits, 1)).allowed
        assert (await limiter.admit(subject, limits, 0)).allowed

    backend.run(body)


def test_a_call_without_texts_is_never_refused_by_the_monthly_quota(
    backend: Backend, subject: str
) -> None:
    """Past the quota (lowered after the month's texts were counted), a call carrying no
    texts (a tenant admin reading its usage, revoking a leaked key) still passes, with
    nothing left; one text is refused."""

    async def body(limiter: Limiter) -> None:
        assert (await limiter.admit(subject, RateLimits(monthly_texts=5), 5)).allowed
        lowered = RateLimits(monthly_texts=3)
        empty = await limiter.admit(subject, lowered, 0)
        assert (empty.allowed, empty.policy, empty.remaining) == (True, "monthly", 0)
        assert not (await limiter.admit(subject, lowered, 1)).allowed

    backend.run(body)


def test_limits_that_are_none_are_not_checked(backend: Backend, subject: str) -> None:
    async def body(limiter: Limiter) -> None:
        assert await limiter.admit(subject, RateLimits(), 10**9) is ALLOWED
        texts_only = RateLimits(texts_per_s=1)
        for _ in range(30):
            assert (await limiter.admit(subject + "/a", texts_only, 0)).allowed
        requests_only = RateLimits(requests_per_s=1)
        decision = await limiter.admit(subject + "/b", requests_only, 10**6)
        assert (decision.allowed, decision.policy) == (True, "requests")

    backend.run(body)


def test_subjects_do_not_share(backend: Backend, subject: str) -> None:
    limits = RateLimits(requests_per_s=1, monthly_texts=1)
    other_tenant = f"tn_{uuid.uuid4().hex[:12]}"

    async def body(limiter: Limiter) -> None:
        assert (await limiter.admit(subject, limits, 1)).allowed
        assert not (await limiter.admit(subject, limits, 1)).allowed
        assert (await limiter.admit(other_tenant, limits, 1)).allowed
        assert (await limiter.admit(f"{subject}/key_1", limits, 1)).allowed

    backend.run(body)


def test_a_key_and_its_tenant_take_together_or_not_at_all(backend: Backend, subject: str) -> None:
    """`also`: a key's own limits checked with its tenant's in one call. A refusal by
    either takes from neither; the decision reports the tightest limit of both."""
    key = f"{subject}/key_1"
    tenant_limits = RateLimits(monthly_texts=10)
    key_limits = RateLimits(requests_per_s=100, monthly_texts=4)

    async def body(limiter: Limiter) -> None:
        both = await limiter.admit(key, key_limits, 3, [(subject, tenant_limits)])
        assert (both.allowed, both.policy, both.remaining) == (True, "monthly", 1)  # the key's
        refused = await limiter.admit(key, key_limits, 2, [(subject, tenant_limits)])
        assert (refused.allowed, refused.policy, refused.limit) == (False, "monthly", 4)
        # The key's refusal took nothing from the tenant: 7 of its 10 are left.
        assert (await limiter.admit(subject, tenant_limits, 7)).allowed
        # Now the tenant refuses; the key's own month is not charged for it.
        over = await limiter.admit(key, key_limits, 1, [(subject, tenant_limits)])
        assert (over.allowed, over.limit) == (False, 10)
        raised = RateLimits(monthly_texts=20)
        again = await limiter.admit(key, key_limits, 1, [(subject, raised)])
        assert (again.allowed, again.remaining) == (True, 0)  # the key's 4th text
        assert not (await limiter.admit(key, key_limits, 1, [(subject, raised)])).allowed

    backend.run(body)


def test_a_request_larger_than_the_bucket_is_refused_as_too_large(
    backend: Backend, subject: str
) -> None:
    """No wait lets it pass: refused as `too_large` with no wait and the bucket's size
    (the most one request may carry), full bucket or not, and nothing is taken."""

    async def body(limiter: Limiter) -> None:
        limits = RateLimits(requests_per_s=10, texts_per_s=5)
        refused = await limiter.admit(subject, limits, 6)
        assert (refused.allowed, refused.too_large, refused.policy) == (False, True, "texts")
        assert (refused.limit, refused.retry_after_s) == (5, 0)
        assert (await limiter.admit(subject, limits, 5)).allowed  # nothing was taken
        for _ in range(9):  # the request bucket empty and the texts one too
            await limiter.admit(subject, limits, 0)
        again = await limiter.admit(subject, limits, 6)  # still too large, not a wait
        assert (again.too_large, again.retry_after_s) == (True, 0)
        assert not (await limiter.admit(subject, limits, 1)).too_large  # a plain refusal
        slow = RateLimits(texts_per_s=0.5)  # holds one text, refills in 2 s
        one = await limiter.admit(subject + "/slow", slow, 2)
        assert (one.too_large, one.limit) == (True, 1)

    backend.run(body)


def test_too_large_for_a_key_or_its_tenant_names_the_smaller_bucket(
    backend: Backend, subject: str
) -> None:
    key = f"{subject}/key_a"

    async def body(limiter: Limiter) -> None:
        tenant, own = RateLimits(texts_per_s=50), RateLimits(texts_per_s=20)
        by_key = await limiter.admit(key, own, 21, [(subject, tenant)])
        assert (by_key.too_large, by_key.limit) == (True, 20)
        by_tenant = await limiter.admit(key, RateLimits(texts_per_s=80), 51, [(subject, tenant)])
        assert (by_tenant.too_large, by_tenant.limit) == (True, 50)
        fits = await limiter.admit(key, own, 20, [(subject, tenant)])
        assert fits.allowed  # both took 20: neither bucket was charged by the refusals
        assert (fits.policy, fits.remaining) == ("texts", pytest.approx(0, abs=0.5))

    backend.run(body)


def test_a_blocked_subject_is_blocked_before_too_large(backend: Backend, subject: str) -> None:
    async def body(limiter: Limiter) -> None:
        limits = RateLimits(requests_per_s=0, texts_per_s=5)
        decision = await limiter.admit(subject, limits, 6)
        assert (decision.too_large, decision.retry_after_s) == (False, BLOCKED_RETRY_S)

    backend.run(body)


def test_a_zero_rate_refuses_everything(backend: Backend, subject: str) -> None:
    async def body(limiter: Limiter) -> None:
        decision = await limiter.admit(subject, RateLimits(requests_per_s=0), 0)
        assert (decision.allowed, decision.retry_after_s) == (False, BLOCKED_RETRY_S)

    backend.run(body)


def test_negative_texts_are_a_caller_bug(backend: Backend, subject: str) -> None:
    async def body(limiter: Limiter) -> None:
        with pytest.raises(ValueError, match="texts"):
            await limiter.admit(subject, RateLimits(requests_per_s=1), -1)

    backend.run(body)


def test_the_tightest_limit_is_reported(backend: Backend, subject: str) -> None:
    limits = RateLimits(requests_per_s=100, texts_per_s=10, monthly_texts=1000)

    async def body(limiter: Limiter) -> None:
        texts = await limiter.admit(subject, limits, 5)  # texts: half left
        assert (texts.policy, texts.limit) == ("texts", 10)
        assert texts.remaining == pytest.approx(5, abs=0.5)
        month = await limiter.admit(subject + "/m", RateLimits(100, 10, 8), 4)
        assert (month.policy, month.remaining) == ("monthly", 4)

    backend.run(body)


def test_concurrent_admits_never_over_admit(backend: Backend, subject: str) -> None:
    async def body(limiter: Limiter) -> None:
        month = RateLimits(monthly_texts=50)
        decisions = await asyncio.gather(*(limiter.admit(subject, month, 1) for _ in range(200)))
        assert sum(d.allowed for d in decisions) == 50

        bucket = RateLimits(requests_per_s=50)
        started = backend.now()
        decisions = await asyncio.gather(
            *(limiter.admit(subject + "/b", bucket, 0) for _ in range(200))
        )
        # 50 in the bucket, plus what refilled while the 200 were answered.
        refilled = int((backend.now() - started) * 50)
        assert 50 <= sum(d.allowed for d in decisions) <= 50 + refilled

    backend.run(body)


def test_a_rate_under_one_per_second_reports_the_window_it_refills_in(
    backend: Backend, subject: str
) -> None:
    """A bucket holds at least one: at 0.25 requests/s that one comes back in 4 s. The
    decision carried only the size, so the headers said one a second (`q=1;w=1`) and a
    client pacing itself by them was refused three times in four; both limiters now
    report the window (1 s from 1/s up, none for the month)."""
    slow = RateLimits(requests_per_s=0.25, texts_per_s=0.5, monthly_texts=1000)

    async def body(limiter: Limiter) -> None:
        first = await limiter.admit(subject, slow, 1)
        assert first.allowed
        assert (first.policy, first.limit, first.window_s) == ("requests", 1, 4.0)
        refused = await limiter.admit(subject, slow, 0)
        assert (refused.allowed, refused.policy, refused.window_s) == (False, "requests", 4.0)
        assert refused.retry_after_s == pytest.approx(4.0, abs=0.5)
        never = await limiter.admit(f"{subject}-b", slow, 2)
        assert (never.too_large, never.policy, never.limit, never.window_s) == (
            True, "texts", 1, 2.0
        )  # fmt: skip
        fast = await limiter.admit(f"{subject}-c", RateLimits(requests_per_s=10), 0)
        assert (fast.limit, fast.window_s) == (10, 1.0)
        month = await limiter.admit(f"{subject}-d", RateLimits(monthly_texts=5), 1)
        assert (month.policy, month.window_s) == ("monthly", 0.0)

    backend.run(body)
