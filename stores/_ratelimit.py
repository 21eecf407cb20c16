"""What both limiters share: bucket sizes, the UTC month, and the choice of the limit a
`Decision` reports. Pure functions over numbers, no I/O.

A bucket is kept as its level and the time it was measured at; the level at `now` adds
what refilled since. Keeping the level (a small number) rather than a point in time keeps
the arithmetic precise at any rate: sums of `n / rate` on a unix time would round off.
A full bucket and a missing one answer alike, which lets idle subjects be dropped.
`stores/ratelimit_redis.py` does the same arithmetic in Lua.

A request with more texts than a texts bucket holds never fits, whatever the bucket's
level: `charges` refuses it (`too_large`) before any bucket is read, so neither limiter
needs its store to say so (a store that is down changes nothing: the answer is the same
400). `check_bucket`, and the Lua script, mark such a take `too_large` as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from stores.ratelimit import ALLOWED, Decision
from stores.tenants import RateLimits

# The wait a refusal under a rate of zero (or less) reports: such a subject is blocked
# until someone raises its limit, so clients are told to come back much later.
BLOCKED_RETRY_S = 3600.0
# Rounding slack, in tokens: a bucket emptied exactly must not refuse its last token.
EPSILON = 1e-9
# A monthly refusal says at least this much (the next month may start in a moment).
MIN_MONTHLY_RETRY_S = 1.0


@dataclass(frozen=True)
class Check:
    """One limit checked for one request: `wait_s` is 0 when it has room, else the
    seconds until it would; `too_large` when it never will (more than the bucket holds);
    `limit`, `remaining` and `reset_s` feed the headers."""

    policy: str
    limit: float
    remaining: float
    reset_s: float
    wait_s: float
    too_large: bool = False
    window_s: float = 1.0  # see `Decision.window_s`


def capacity(rate: float) -> float:
    """A bucket holds one second's worth, and at least one."""
    return max(1.0, rate)


def window(rate: float) -> float:
    """The seconds a bucket at `rate` takes to refill from empty: what `RateLimit-Policy`
    says its `capacity` is admitted in (1 s from 1/s up; 4 s for a rate of 0.25/s)."""
    return capacity(rate) / rate


def blocked(limits: RateLimits) -> Decision | None:
    """The refusal for a rate of zero or less (nothing can ever refill), else None."""
    for rate in (limits.requests_per_s, limits.texts_per_s):
        if rate is not None and rate <= 0:
            return Decision(False, retry_after_s=BLOCKED_RETRY_S)
    return None


def too_large(limits: Sequence[RateLimits], texts: int) -> Decision | None:
    """The refusal of a request carrying more texts than one of the texts buckets holds
    (no wait lets it pass), naming the smallest such bucket; else None."""
    rates = [
        lim.texts_per_s
        for lim in limits
        if lim.texts_per_s is not None and texts > capacity(lim.texts_per_s)
    ]
    if not rates:
        return None
    rate = min(rates, key=capacity)
    return Decision(False, 0.0, "texts", capacity(rate), too_large=True, window_s=window(rate))


def charges(
    subject: str,
    limits: RateLimits,
    texts: int,
    also: Sequence[tuple[str, RateLimits]],
) -> list[tuple[str, RateLimits]] | Decision:
    """The subjects an `admit` call takes from (those with any limit set), or the
    decision reached without looking at a bucket: allowed when none has a limit, refused
    when one has a rate of zero or less, refused as `too_large` when the request carries
    more texts than one of their texts buckets holds. Raises ValueError for a negative
    `texts`."""
    if texts < 0:
        raise ValueError(f"texts must be >= 0, got {texts}")
    charged = [(s, lim) for s, lim in ((subject, limits), *also) if lim.is_set()]
    if not charged:
        return ALLOWED
    for _, lim in charged:
        if (refusal := blocked(lim)) is not None:
            return refusal
    return too_large([lim for _, lim in charged], texts) or charged


@dataclass(frozen=True)
class Bucket:
    """A bucket's level (tokens) as of `at` (unix seconds)."""

    tokens: float
    at: float

    def full_at(self, rate: float) -> float:
        """When it is full again, refilling at `rate`."""
        return self.at + (capacity(rate) - self.tokens) / rate


def check_bucket(
    policy: str, rate: float, state: Bucket | None, now: float, n: int
) -> tuple[Check, Bucket]:
    """Check taking `n` from a bucket (None: full); returns the check and the bucket
    after taking (only to be stored when every limit has room)."""
    cap, w = capacity(rate), window(rate)
    # Capped at the capacity, so a lowered rate never leaves more than a full bucket; a
    # clock that stepped back refills nothing (and keeps the later time).
    at = now if state is None else max(now, state.at)
    tokens = cap if state is None else min(cap, state.tokens + max(0.0, now - state.at) * rate)
    if n > cap:  # never fits, however long the caller waits: no wait to tell
        return Check(policy, cap, tokens, (cap - tokens) / rate, 0.0, True, w), Bucket(tokens, at)
    if tokens + EPSILON < n:
        wait = (n - tokens) / rate
        return Check(policy, cap, tokens, wait, wait, window_s=w), Bucket(tokens, at)
    left = max(0.0, tokens - n)
    return Check(policy, cap, left, (cap - left) / rate, 0.0, window_s=w), Bucket(left, at)


def check_month(limit: int, used: int, now: float, n: int) -> Check:
    """Check adding `n` texts to a month in which `used` are counted already. A call
    with no texts is never refused by the quota, even past it (a quota lowered
    mid-month, replicas that each admitted a second past it): the quota counts texts."""
    reset_s = max(MIN_MONTHLY_RETRY_S, next_month_start(now) - now)
    if n > 0 and used + n > limit:
        return Check("monthly", limit, max(0, limit - used), reset_s, reset_s, window_s=0.0)
    return Check("monthly", limit, max(0, limit - used - n), reset_s, 0.0, window_s=0.0)


def month_key(now: float) -> int:
    """The UTC month holding `now`, as YYYYMM."""
    day = datetime.fromtimestamp(now, UTC)
    return day.year * 100 + day.month


def next_month_start(now: float) -> float:
    """The unix time at which the UTC month after the one holding `now` starts."""
    day = datetime.fromtimestamp(now, UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def decide(checks: Sequence[Check]) -> Decision:
    """Refused as `too_large` (the smallest such bucket) when a check can never pass,
    else with the longest wait when any check has none left, else allowed with the
    tightest limit (the smallest fraction left) for the `RateLimit` headers."""
    if not checks:
        return Decision(True)
    if never := [c for c in checks if c.too_large]:
        c = min(never, key=lambda c: c.limit)
        return _decision(False, 0.0, c, too_large=True)
    worst = max(checks, key=lambda c: c.wait_s)
    if worst.wait_s > 0:
        return _decision(False, worst.wait_s, worst)
    tight = min(checks, key=lambda c: c.remaining / c.limit if c.limit > 0 else 0.0)
    return _decision(True, 0.0, tight)


def _decision(allowed: bool, wait_s: float, c: Check, too_large: bool = False) -> Decision:
    return Decision(
        allowed, wait_s, c.policy, c.limit, c.remaining, c.reset_s, too_large, c.window_s
    )
