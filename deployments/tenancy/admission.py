"""Rate limits and monthly quotas on the request path: one limiter call per request,
answered with the IETF `RateLimit` / `RateLimit-Policy` headers, and a 429 with
`Retry-After` when over. A request that no wait would let through (more texts than the
caller's `texts_per_s` bucket holds) is a 400 instead, `too_large_for_rate_limit`,
naming the field and the most one request may carry, with no `Retry-After`: a client
that honours 429 would otherwise send it again forever."""

from __future__ import annotations

import math
import time
from logging import Logger

from deployments.errors import BadRequest, RateLimited, Unavailable
from deployments.tenancy.principal import Principal
from stores.ratelimit import Decision, Limiter, LimiterUnavailable

WARN_EVERY_S = 30.0
# The most seconds a header says (about 31 years): a wait that is infinite (a rate
# stored before rates had a lower bound) is told as this instead of failing the request.
MAX_HEADER_S = 10**9


def whole_seconds(value: float, least: int = 0) -> int:
    """`value` rounded up to whole seconds, at least `least`, at most `MAX_HEADER_S`
    (also for an infinite or undefined value)."""
    if not value < MAX_HEADER_S:
        return MAX_HEADER_S
    return max(least, math.ceil(value))


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """`RateLimit-Policy` and `RateLimit` (structured fields, draft-ietf-httpapi-
    ratelimit-headers) for the tightest of the caller's limits."""
    if not decision.policy:
        return {}
    # A bucket's window is the time it refills in: a rate under 1/s (a bucket of one)
    # said `q=1;w=1`, and a client pacing itself by it was refused every other time.
    if decision.policy == "monthly":
        window = "2592000"
    else:
        window = str(whole_seconds(decision.window_s - 1e-9, 1))
    name = f'"{decision.policy}"'
    return {
        "RateLimit-Policy": f"{name};q={math.floor(decision.limit)};w={window}",
        "RateLimit": f"{name};r={max(0, math.floor(decision.remaining))};"
        f"t={whole_seconds(decision.reset_s)}",
    }


class TooLargeForRateLimit(BadRequest):
    """More texts in one request than the caller's `texts_per_s` bucket holds: it can
    never be admitted, so it is refused as the request's fault (never retried), not 429.
    `RateLimit-Policy` says the bucket's size."""

    code = "too_large_for_rate_limit"

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class Admission:
    """Admits a request of `texts` texts for a caller, or raises 429 (or 400 for a
    request larger than a texts bucket)."""

    def __init__(self, limiter: Limiter, fail_open: bool, log: Logger) -> None:
        self.limiter = limiter
        self.fail_open = fail_open
        self.log = log
        self._warned = 0.0

    async def admit(
        self, principal: Principal, texts: int, field: str | None = None
    ) -> dict[str, str]:
        """The `RateLimit` headers for the response; raises `RateLimited` when over, and
        `TooLargeForRateLimit` (naming `field`, the request's texts) when the request
        carries more texts than a `texts_per_s` bucket holds.
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
        if decision.too_large:
            raise _too_large(principal, decision, texts, field)
        if not decision.allowed:
            retry = whole_seconds(decision.retry_after_s, 1)
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


def _too_large(
    principal: Principal, decision: Decision, texts: int, field: str | None
) -> TooLargeForRateLimit:
    """The 400 for a request no wait lets through: whose `texts_per_s` refused it (the
    smaller of the key's own and the tenant's) and the most one request may carry."""
    key_rate, tenant_rate = principal.key_limits.texts_per_s, principal.limits.texts_per_s
    mine = key_rate is not None and (tenant_rate is None or key_rate <= tenant_rate)
    whose = "this API key's" if mine else "the tenant's"
    rate = key_rate if mine else tenant_rate
    most = math.floor(decision.limit)
    # The rate as set (a bucket holds at least one text: 0.5/s is not "1/s").
    shown = f"{rate:g}" if rate is not None else f"{decision.limit:g}"
    message = (
        f"{field or 'texts'}: {texts} texts in one request, more than {whose} texts_per_s "
        f"limit ({shown}/s) ever admits; send at most {most} per request"
    )
    policy = ratelimit_headers(decision).get("RateLimit-Policy")
    return TooLargeForRateLimit(message, {"RateLimit-Policy": policy} if policy else {})
