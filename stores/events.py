"""Interactions of end users with catalog items: the durable log `POST /v1/events`
appends to before it answers, and from which online features can be rebuilt.

Backend: `stores/events_sql.py` (SQLite embedded, PostgreSQL in production, in the
registry's database and its migration history). The tenant is part of every row and of
every read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")


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
    acknowledged (callers answer 503 and the client retries)."""


class EventLog(Protocol):
    """Append-only interactions per tenant. Blocking calls (replicas use threads)."""

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""

    def append(self, tenant_id: str, events: list[Event]) -> int:
        """Append events in one transaction, durable when it returns; the seq of the
        last one (the tenant's events keep their order). `EventLogUnavailable` when the
        database fails."""

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
