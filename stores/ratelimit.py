"""Rate limits and monthly quotas: the interface and its values.

Two token buckets (requests/s, texts/s; each holds one second's worth, so a burst of a
second is allowed) and a monthly text counter per subject (a tenant, or a key with its
own limits). One `admit` checks all three, of one subject or several (a key and its
tenant), and takes from all or none, atomically.
Backends: `EmbeddedLimiter` (this process only: each replica limits alone) and
`RedisLimiter` (shared by every replica; one round trip per request).

Refusals carry the exact wait until the same request would pass. A request with more
texts than a texts bucket holds (more than one second's worth) can never pass, however
long it waits: it is refused as `too_large`, with no wait, naming the bucket's size (the
most one request may carry), and callers answer a 400 that is not retried (the client
must split it), never a 429. A request over the monthly quota is refused until the next
month (UTC). A rate of zero or less refuses everything (`stores._ratelimit.
BLOCKED_RETRY_S`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from stores.tenants import RateLimits


@dataclass(frozen=True)
class Decision:
    """The answer of `admit`. When refused, `retry_after_s` says when the same request
    would be admitted (at least 1 s for a monthly quota: the start of next month), except
    when `too_large`: the request carries more texts than the `texts` bucket holds
    (`limit`, the most one request may carry), so no wait lets it pass."""

    allowed: bool
    retry_after_s: float = 0.0
    # The tightest limit, for the `RateLimit`/`RateLimit-Policy` headers: its name
    # (`requests`, `texts`, `monthly`), its size, what is left and seconds to reset.
    policy: str = ""
    limit: float = 0.0
    remaining: float = 0.0
    reset_s: float = 0.0
    too_large: bool = False
    # Seconds in which the limit's `limit` is admitted from empty: 1 for a rate of at
    # least 1/s, longer below (a bucket of one at 0.5/s refills in 2 s); 0 for the month.
    window_s: float = 1.0


ALLOWED = Decision(True)


class LimiterUnavailable(Exception):
    """The limiter's store did not answer (down, unreachable, too slow). The caller
    decides whether to fail open (admit) or closed (503); the limiter never guesses."""


class Limiter(Protocol):
    """Admits or refuses one request of `texts` texts for `subject` under `limits`."""

    async def admit(
        self,
        subject: str,
        limits: RateLimits,
        texts: int,
        also: Sequence[tuple[str, RateLimits]] = (),
    ) -> Decision:
        """Take one request and `texts` texts from `subject`'s buckets and month and from
        those of each `(subject, limits)` of `also`, or nothing when any of them is
        short; the decision reports the tightest limit of them all. Subjects carry the
        tenant (`tn_x`, `tn_x/key_y`); the subjects of one call share their tenant."""

    async def close(self) -> None:
        """Release connections."""
