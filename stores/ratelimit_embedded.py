"""Rate limits kept in this process: each replica limits alone (what `make serve` runs).

Every `admit` runs without awaiting, so the event loop makes it atomic; no locks. The
work per call is constant: one dictionary entry per subject, and at most a few idle
entries dropped per call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from stores._ratelimit import (
    Bucket,
    Check,
    blocked,
    check_bucket,
    check_month,
    decide,
    month_key,
)
from stores.ratelimit import ALLOWED, Decision
from stores.tenants import RateLimits

# Idle entries dropped per call at most, so that no single request pays for a sweep.
_EVICT_PER_CALL = 8


@dataclass
class _Buckets:
    """A subject's buckets (None: full, or never limited) and when both are full."""

    requests: Bucket | None = None
    texts: Bucket | None = None
    full_at: float = 0.0  # from then on the entry says nothing a missing one would not


class EmbeddedLimiter:
    """In-process token buckets and monthly counters behind the `Limiter` interface.

    Bucket entries are kept in the order they last changed and dropped once full again
    (a full bucket and a missing one answer alike). Monthly counters are kept until the
    month ends: dropping one would hand its subject a fresh quota.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, _Buckets] = OrderedDict()
        self._month = 0  # YYYYMM that `_used` counts
        self._used: dict[str, int] = {}

    async def admit(self, subject: str, limits: RateLimits, texts: int) -> Decision:
        """Take one request and `texts` texts from `subject`'s buckets and month, or
        nothing when any of them is short (see `stores.ratelimit`)."""
        if texts < 0:
            raise ValueError(f"texts must be >= 0, got {texts}")
        if not limits.is_set():
            return ALLOWED
        refusal = blocked(limits)
        if refusal is not None:
            return refusal
        now = self._clock()
        self._evict(now)
        entry = self._buckets.get(subject) or _Buckets()
        checks: list[Check] = []
        taken = _Buckets()
        if limits.requests_per_s is not None:
            check, taken.requests = check_bucket(
                "requests", limits.requests_per_s, entry.requests, now, 1
            )
            checks.append(check)
        if limits.texts_per_s is not None:
            check, taken.texts = check_bucket("texts", limits.texts_per_s, entry.texts, now, texts)
            checks.append(check)
        if limits.monthly_texts is not None:
            used = self._used_by(subject, now)
            checks.append(check_month(limits.monthly_texts, used, now, texts))
        decision = decide(checks)
        if decision.allowed:
            if taken.requests is not None or taken.texts is not None:
                self._take(subject, taken, limits, now)
            if limits.monthly_texts is not None and texts:
                self._used[subject] = self._used.get(subject, 0) + texts
        return decision

    async def close(self) -> None:
        """Nothing to release; the counters go with the process."""

    def __len__(self) -> int:
        """Subjects whose buckets are not full (what memory holds besides the months)."""
        return len(self._buckets)

    def _take(self, subject: str, taken: _Buckets, limits: RateLimits, now: float) -> None:
        """Store the buckets after taking, as the newest change. A bucket whose limit is
        not checked now is forgotten: set again later, it starts full."""
        if taken.requests is not None and limits.requests_per_s is not None:
            taken.full_at = taken.requests.full_at(limits.requests_per_s)
        if taken.texts is not None and limits.texts_per_s is not None:
            taken.full_at = max(taken.full_at, taken.texts.full_at(limits.texts_per_s))
        if taken.full_at > now:
            self._buckets[subject] = taken
            self._buckets.move_to_end(subject)
        else:
            self._buckets.pop(subject, None)  # full: nothing to remember

    def _used_by(self, subject: str, now: float) -> int:
        """Texts counted for `subject` this month; a new month forgets the last one."""
        month = month_key(now)
        if month != self._month:
            self._month, self._used = month, {}
        return self._used.get(subject, 0)

    def _evict(self, now: float) -> None:
        # The oldest change comes first; stop at the first entry that is still filling
        # (later ones are dropped once it is).
        for _ in range(_EVICT_PER_CALL):
            if not self._buckets:
                return
            subject, entry = next(iter(self._buckets.items()))
            if entry.full_at > now:
                return
            del self._buckets[subject]
