"""Rate limits and monthly quotas on the request path: one limiter call per request,
answered with the IETF `RateLimit` / `RateLimit-Policy` headers, and a 429 with
`Retry-After` when over."""

from __future__ import annotations

import math
import time
from logging import Logger

from deployments.errors import RateLimited, Unavailable
from deployments.tenancy.principal import Principal
from stores.ratelimit import Decision, Limiter, LimiterUnavailable

WARN_EVERY_S = 30.0


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
        Every key of a tenant draws on the tenant's buckets and month; a key with limits
        of its own on those too, in the same limiter call: the request takes from both
        or from neither (a key over its own limit leaves the tenant's to its other keys,
        a tenant over its limits costs the key nothing)."""
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
        if not charges:
            return {}
        (subject, limits), *also = charges
        try:
            decision = await self.limiter.admit(subject, limits, texts, also)
        except LimiterUnavailable as e:
            return self._unavailable(e)
        headers = ratelimit_headers(decision)
        if not decision.allowed:
            retry = max(1, math.ceil(decision.retry_after_s))
            what = "monthly text quota" if decision.policy == "monthly" else "rate limit"
            raise RateLimited(
                f"{what} exceeded: retry after {retry} s", {**headers, "Retry-After": str(retry)}
            )
        return headers

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
