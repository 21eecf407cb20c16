"""Rate limits kept in this process: each replica limits alone (what `make serve` runs).

Every `admit` decides without awaiting, so the event loop makes it atomic; no locks. The
work per call is constant: one dictionary entry per subject, and at most a few idle
entries dropped per call.

Monthly quotas, given a store of counts (the registry's database), hold across restarts
and across the replicas on that database: the texts admitted here are added to the
stored counts every `sync_s` off the request path, and each sync reads back every
subject's stored count, so a replica sees the month as stored plus what it admitted
since (the others' last second aside). A replica starting in a month loads the stored
counts before it admits against a quota; while the store does not answer, it counts in
memory and tries again each `sync_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from stores._ratelimit import (
    Bucket,
    Check,
    charges,
    check_bucket,
    check_month,
    decide,
    month_key,
)
from stores.ratelimit import Decision
from stores.tenants import RateLimits

# Idle entries dropped per call at most, so that no single request pays for a sweep.
_EVICT_PER_CALL = 8
LOG = logging.getLogger("servekit.limits")
LOAD_WAIT_S = 1.0  # the longest a request waits for a month's stored counts
CLOSE_WAIT_S = 5.0  # the longest closing waits to store what is pending


class MonthCounts(Protocol):
    """Where monthly counts are kept (the registry)."""

    def add_month_texts(self, counts: dict[tuple[int, str], int]) -> None:
        """Add texts per (month YYYYMM, subject) to the stored counts."""

    def month_texts(self, month: int) -> dict[str, int]:
        """Every subject's stored count of `month`."""


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

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        counts: MonthCounts | None = None,
        sync_s: float = 1.0,
    ) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, _Buckets] = OrderedDict()
        self._month = 0  # YYYYMM that `_used` counts
        # Stored counts of `_month` as of the last sync (everything, without a store).
        self._used: dict[str, int] = {}
        # Admitted here and not stored yet, per (month, subject).
        self._pending: dict[tuple[int, str], int] = {}
        self._counts = counts
        self._sync_s = sync_s
        self._synced_month = 0  # the month whose stored counts `_used` holds
        # The load of a month's stored counts that its first requests wait for.
        self._load: asyncio.Future[bool] | None = None
        self._loading_month = 0
        self._load_until = 0.0  # loop time past which no request waits for it
        self._failing = False  # the last sync failed
        self._sync_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def admit(
        self,
        subject: str,
        limits: RateLimits,
        texts: int,
        also: Sequence[tuple[str, RateLimits]] = (),
    ) -> Decision:
        """Take one request and `texts` texts from `subject`'s buckets and month and
        from each of `also`'s, or nothing when any of them is short (see
        `stores.ratelimit`)."""
        charged = charges(subject, limits, texts, also)
        if isinstance(charged, Decision):
            return charged
        if self._counts is not None and any(lim.monthly_texts is not None for _, lim in charged):
            await self._load_month()
        now = self._clock()
        self._evict(now)
        checks: list[Check] = []
        takes: list[tuple[str, RateLimits, _Buckets]] = []
        for who, lim in charged:
            entry = self._buckets.get(who) or _Buckets()
            taken = _Buckets()
            if lim.requests_per_s is not None:
                check, taken.requests = check_bucket(
                    "requests", lim.requests_per_s, entry.requests, now, 1
                )
                checks.append(check)
            if lim.texts_per_s is not None:
                check, taken.texts = check_bucket("texts", lim.texts_per_s, entry.texts, now, texts)
                checks.append(check)
            if lim.monthly_texts is not None:
                checks.append(check_month(lim.monthly_texts, self._used_by(who, now), now, texts))
            takes.append((who, lim, taken))
        decision = decide(checks)
        if decision.allowed:
            for who, lim, taken in takes:
                if taken.requests is not None or taken.texts is not None:
                    self._take(who, taken, lim, now)
                if lim.monthly_texts is not None and texts:
                    if self._counts is None:
                        self._used[who] = self._used.get(who, 0) + texts
                    else:
                        key = (self._month, who)
                        self._pending[key] = self._pending.get(key, 0) + texts
        return decision

    async def close(self) -> None:
        """Stop syncing and store what was admitted since the last sync. A sync under
        way finishes first (its counts are stored and taken off what is pending
        together; cancelled halfway, they would be stored twice)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._counts is not None and self._pending:
            # Bounded: a store that hangs must not hold a replica's shutdown.
            await asyncio.wait([asyncio.ensure_future(self.sync())], timeout=CLOSE_WAIT_S)

    async def sync(self) -> bool:
        """Store the texts admitted since the last sync and read back every subject's
        stored count of this month; False (and counting goes on in memory) when the
        store did not answer. Counts the store added are off what is pending even when
        the read back fails, so that no sync adds them again."""
        assert self._counts is not None
        counts = self._counts
        async with self._sync_lock:
            month = month_key(self._clock())
            flushing = dict(self._pending)

            def store() -> tuple[dict[str, int] | None, Exception | None]:
                counts.add_month_texts(flushing)  # raising: nothing was stored
                try:
                    return counts.month_texts(month), None
                except Exception as e:  # stored, but not read back
                    return None, e

            try:
                stored, error = await asyncio.to_thread(store)
            except Exception as e:  # the store's own errors: down, locked, refusing
                return self._failed("not stored", e)
            # No await from here on: the counts and what is pending change together.
            # Stored now, whether or not the read back answered: counted once more
            # on the next sync otherwise.
            self._stored(flushing)
            if stored is None:
                assert error is not None
                return self._failed("stored but not read back", error)
            if self._failing:
                LOG.warning("monthly quota counts stored again")
                self._failing = False
            if month >= self._month:
                self._month, self._used, self._synced_month = month, stored, month
            return True

    def _stored(self, flushed: dict[tuple[int, str], int]) -> None:
        """Move counts the store has added from what is pending to what is stored."""
        for (month, subject), n in flushed.items():
            left = self._pending.get((month, subject), 0) - n
            if left:
                self._pending[(month, subject)] = left
            else:
                self._pending.pop((month, subject), None)
            if month == self._month:  # until a read back brings the stored counts
                self._used[subject] = self._used.get(subject, 0) + n

    def _failed(self, what: str, error: Exception) -> bool:
        if not self._failing:  # once an outage, not every second
            LOG.warning(
                "monthly quota counts %s (%s); counting in memory", what, type(error).__name__
            )
        self._failing = True
        return False

    async def _load_month(self) -> None:
        """Before the first decisions against a quota in a month: the stored counts.
        Every request arriving while they load waits for the same load, until at most
        `LOAD_WAIT_S` after it began; past that, or when the store failed, requests are
        decided on what memory holds while the background sync goes on trying."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        month = month_key(self._clock())
        if month == self._synced_month:
            return
        loop = asyncio.get_running_loop()
        if self._load is None or self._loading_month != month:
            self._loading_month = month
            # Never cancelled at a wait's end: a sync that stored counts must also take
            # them off what is pending, or they would count twice.
            self._load = asyncio.ensure_future(self.sync())
            self._load_until = loop.time() + LOAD_WAIT_S
        left = self._load_until - loop.time()
        if not self._load.done() and left > 0:
            await asyncio.wait([self._load], timeout=left)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._sync_s)
            if self._pending or self._loading_month:
                # Shielded: cancelling the loop (close) lets a sync under way finish.
                await asyncio.shield(self.sync())

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
        """Texts counted for `subject` this month (stored, plus admitted here since the
        last sync); a new month forgets the last one."""
        month = month_key(now)
        if month != self._month:
            self._month, self._used = month, {}
        return self._used.get(subject, 0) + self._pending.get((month, subject), 0)

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
