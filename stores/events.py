"""Interactions of end users with catalog items: the durable log `POST /v1/events`
appends to before it answers, and from which online features can be rebuilt.

Backend: `stores/events_sql.py` (SQLite embedded, PostgreSQL in production, in the
registry's database and its migration history). The tenant is part of every row and of
every read.

A batch sent with a key (the caller's `Idempotency-Key`, else its `X-Request-ID`) is
appended once: `append_once` keeps the key with the batch, in the same transaction, and
a repeat within `BATCH_RETENTION_S` finds what the first stored instead of appending
again. A client that resends a batch whose answer it lost (a connection that broke after
the commit, before its acknowledgement) therefore never has its events counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
# How long a batch's key is kept: a repeat within it is the same batch.
BATCH_RETENTION_S = 24 * 3600.0
MAX_BATCH_KEY = 128  # characters of a batch key (as of a request id)


@dataclass(frozen=True)
class Event:
    """One interaction: `user` did `type` to `item` at `at` (aware UTC), on an item of
    `catalog` (None: not said)."""

    user: str
    item: str
    type: str
    at: datetime
    catalog: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    """An event as the log holds it: its position and when it was received."""

    seq: int
    tenant_id: str
    event: Event
    received_at: datetime


class EventLogUnavailable(Exception):
    """The log's database did not take the events: nothing was appended, nothing may be
    acknowledged (callers answer 503 and the client retries). From `append_once`: not
    appended, or not known to be; a repeat under the same key appends it at most once."""


class EventLogOutcomeUnknown(Exception):
    """The database failed while committing a batch appended without a key: it may be
    in the log or not, and nothing tells which. Not to be retried as is (callers answer
    500): a resend could store it twice."""


class BatchKeyReused(Exception):
    """A key already kept with another batch (other events, or another catalog) within
    `BATCH_RETENTION_S`: a repeat must be the same batch. Nothing was appended."""


@dataclass(frozen=True)
class BatchKey:
    """What identifies a batch: the caller's key (1 to `MAX_BATCH_KEY` characters) and a
    digest of its content, which a repeat must match."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class Appended:
    """What `append_once` did. `repeat`: the key was kept with this batch already, and
    nothing was appended now; `seq`, `first_seq`, `accepted` and `outcome` are then the
    first call's. `merge`: this call is the one to merge the events into the online rows
    (the call that appends them, or a repeat whose first call never merged them)."""

    seq: int
    first_seq: int
    accepted: int
    repeat: bool
    merge: bool
    outcome: dict[str, Any] = field(default_factory=dict)


class EventLog(Protocol):
    """Append-only interactions per tenant. Blocking calls (replicas use threads)."""

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""

    def append(self, tenant_id: str, events: list[Event]) -> int:
        """Append events in one transaction, durable when it returns; the seq of the
        last one (the tenant's events keep their order). `EventLogUnavailable` when the
        database fails before the commit (nothing appended), `EventLogOutcomeUnknown`
        when the commit itself fails (appended or not: unknown)."""

    def append_once(
        self,
        tenant_id: str,
        events: list[Event],
        key: BatchKey,
        outcome: Mapping[str, Any],
    ) -> Appended:
        """Append non-empty `events` and keep `key` with them and `outcome` (what the
        answer says besides the seqs, as JSON), in one transaction; or, when the tenant
        kept `key` with the same batch within `BATCH_RETENTION_S`, append nothing and
        answer what was kept. `BatchKeyReused` for a key kept with another batch;
        `EventLogUnavailable` when the database fails (a failed commit is looked up
        again: the batch stored is an answer, one not found is not appended)."""

    def batch_merged(self, tenant_id: str, key: str, merged: bool) -> None:
        """Record whether the events of the batch kept with `key` are in the online
        rows: False lets a repeat merge them. Best effort: `EventLogUnavailable`."""

    def scan(self, tenant_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """The tenant's events with seq > `after_seq`, oldest first, at most `limit`."""

    def for_user(self, tenant_id: str, user: str, limit: int) -> list[StoredEvent]:
        """The user's newest events, newest first, at most `limit`."""

    def popular(
        self,
        tenant_id: str,
        since: datetime,
        weights: Mapping[str, float],
        limit: int,
        catalog: str | None = None,
    ) -> list[tuple[str, float]]:
        """The tenant's items with the most weighted events at or after `since` (each
        event weighing `weights[type]`), most first (ties by item id), at most `limit`;
        with `catalog`, of the events naming it or no catalog."""

    def close(self) -> None:
        """Release connections."""
