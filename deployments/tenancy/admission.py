"""Rate limits and monthly quotas on the request path: one limiter call per request (two
for a key with limits of its own), answered with the IETF `RateLimit` /
`RateLimit-Policy` headers, and a 429 with `Retry-After` when over."""

from __future__ import annotations

import math
import time
from logging import Logger

from deployments.errors import RateLimited, Unavailable
from deployments.tenancy.principal import Principal
from stores.ratelimit import Decision, Limiter, LimiterUnavailable

WARN_EVERY_S = 30.0


def _left(decision: Decision) -> float:
    """The share of its limit a decision's tightest limit has left."""
    return decision.remaining / decision.limit if decision.limit > 0 else 0.0


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """`RateLimit-Policy` and `RateLimit` (structured fields, draft-ietf-httpapi-
    ratelimit-headers) for the tightest of the caller's limits."""
    if not decision.policy:
        return {}
    window = "2592000" if decision.policy == "monthly" else "1"
    name = f'"{decision.policy}"'
    return {
        "RateLimit-Policy": f"{name};q={math.floor(decision.limit)};w={window}",
        "RateLimit": f"{name};r={max(0, math.floor(decision.remaining))};"
        f"t={max(0, math.ceil(decision.reset_s))}",
    }


class Admission:
    """Admits a request of `texts` texts for a caller, or raises 429."""

    def __init__(self, limiter: Limiter, fail_open: bool, log: Logger) -> None:
        self.limiter = limiter
        self.fail_open = fail_open
        self.log = log
        self._warned = 0.0

    async def admit(self, principal: Principal, texts: int) -> dict[str, str]:
        """The `RateLimit` headers for the response; raises `RateLimited` when over.
        A key with limits of its own is checked against them first, then the request
        against its tenant's: every key of a tenant shares the tenant's buckets and
        month, so no key takes more than the tenant has. A key over its own limits is
        refused before the tenant's are touched (its burst leaves the tenant's other
        keys their share); one refused by the tenant's has spent its own."""
        if principal.operator:
            return {}
        charges = [
            (subject, limits)
            for subject, limits in (
                (principal.key_subject, principal.key_limits),
                (principal.subject, principal.limits),
            )
            if limits.is_set()
        ]
        tightest: Decision | None = None
        for subject, limits in charges:
            try:
                decision = await self.limiter.admit(subject, limits, texts)
            except LimiterUnavailable as e:
                return self._unavailable(e)
            if not decision.allowed:
                headers = ratelimit_headers(decision)
                retry = max(1, math.ceil(decision.retry_after_s))
                what = "monthly text quota" if decision.policy == "monthly" else "rate limit"
                raise RateLimited(
                    f"{what} exceeded: retry after {retry} s",
                    {**headers, "Retry-After": str(retry)},
                )
            if tightest is None or _left(decision) < _left(tightest):
                tightest = decision
        return ratelimit_headers(tightest) if tightest is not None else {}

    def _unavailable(self, error: LimiterUnavailable) -> dict[str, str]:
        now = time.monotonic()
        if now - self._warned > WARN_EVERY_S:
            self._warned = now
            self.log.warning(
                "rate limiter unreachable; %s",
                "admitting requests" if self.fail_open else "refusing requests",
                extra={"fields": {"error": type(error).__name__}},
            )
        if self.fail_open:
            return {}
        raise Unavailable("rate limits cannot be checked right now") from error
