"""The event log on SQL: SQLite (embedded) and PostgreSQL (production), in the registry's
database, with the registry's engines, transactions and migration history (0004)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.exc import DBAPIError

from stores.events import EVENT_TYPES, Event, EventLogUnavailable, StoredEvent
from stores.registry_sql import (
    UtcDateTime,
    byte_ordered,
    create_sql_engine,
    migrate_database,
    writing,
)

_MAX_ID = 256
# The first key of the event log's advisory locks on PostgreSQL (the second: the tenant).
_LOCK_SPACE = 0x5E4E


# The table as the code reads and writes it; migration 0004 creates it (and must agree).
metadata = MetaData()
events_table = Table(
    "events",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant_id", byte_ordered(64), nullable=False),
    Column("user_id", byte_ordered(_MAX_ID), nullable=False),
    Column("item_id", byte_ordered(_MAX_ID), nullable=False),
    Column("type", String(16), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("catalog", byte_ordered(64)),
    Column("received_at", UtcDateTime, nullable=False),
)


class SqlEventLog:
    """The `EventLog` on SQLite or PostgreSQL. Blocking and thread-safe: each call
    takes its own pooled connection."""

    def __init__(self, url: str) -> None:
        """Connect lazily to `url`; call `migrate()` (or use `open_event_log`) first."""
        self._engine = create_sql_engine(url)

    def migrate(self) -> None:
        """Bring the database's schema (shared with the registry) to the newest migration."""
        migrate_database(self._engine)

    def append(self, tenant_id: str, events: list[Event]) -> int:
        """Append events in one transaction (durable when it returns); the last seq, 0
        when `events` is empty."""
        if not 0 < len(tenant_id) <= 64:
            raise ValueError("a tenant id has 1 to 64 characters")
        for event in events:
            _check(event)
        if not events:
            return 0
        now = datetime.now(UTC)
        rows = [_values(tenant_id, e, now) for e in events]
        try:
            return self._append(rows)
        except DBAPIError as e:  # the database: down, unreachable, refusing
            raise EventLogUnavailable(f"event log failed: {type(e.orig).__name__}") from e

    def _append(self, rows: list[dict[str, Any]]) -> int:
        with writing(self._engine) as conn:
            if self._engine.dialect.name == "sqlite":
                # One statement for every row; the seq is SQLite's rowid, and this
                # transaction holds the database's write lock, so the connection's last
                # inserted rowid is the batch's last seq.
                conn.execute(insert(events_table), rows)
                return int(conn.execute(select(func.last_insert_rowid())).scalar_one())
            # PostgreSQL hands out a BIGSERIAL's numbers at insert, not at commit: two
            # appends of one tenant could commit out of order, and a reader that had
            # scanned past the later one's seq would never see the earlier one. The
            # tenant's lock, held until commit, queues its appends, so its seqs become
            # visible in order; other tenants' appends do not wait.
            tenant = rows[0]["tenant_id"]
            conn.execute(select(func.pg_advisory_xact_lock(_LOCK_SPACE, func.hashtext(tenant))))
            seqs = conn.execute(insert(events_table).returning(events_table.c.seq), rows)
            return max(int(s) for s in seqs.scalars())

    def scan(self, tenant_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """The tenant's events after `after_seq`, oldest first, at most `limit`."""
        query = (
            select(events_table)
            .where(events_table.c.tenant_id == tenant_id, events_table.c.seq > after_seq)
            .order_by(events_table.c.seq)
            .limit(max(0, limit))
        )
        with self._engine.connect() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def for_user(self, tenant_id: str, user: str, limit: int) -> list[StoredEvent]:
        """The user's newest events, newest first."""
        query = (
            select(events_table)
            .where(events_table.c.tenant_id == tenant_id, events_table.c.user_id == user)
            .order_by(events_table.c.seq.desc())
            .limit(max(0, limit))
        )
        with self._engine.connect() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def popular(
        self,
        tenant_id: str,
        since: datetime,
        weights: Mapping[str, float],
        limit: int,
        catalog: str | None = None,
    ) -> list[tuple[str, float]]:
        """The tenant's items with the most weighted events since `since`, most first
        (with `catalog`: of its events and those that named none)."""
        if not any(w > 0 for w in weights.values()):
            return []  # nothing weighs anything: no item is popular
        c = events_table.c
        weight = case(
            *((c.type == kind, literal(float(w))) for kind, w in sorted(weights.items())),
            else_=literal(0.0),
        )
        total = func.sum(weight).label("weight")
        query = (
            select(c.item_id, total)
            .where(
                c.tenant_id == tenant_id,
                c.at >= since,
                true() if catalog is None else or_(c.catalog == catalog, c.catalog.is_(None)),
            )
            .group_by(c.item_id)
            .order_by(total.desc(), c.item_id)
            .limit(max(0, limit))
        )
        try:
            with self._engine.connect() as conn:
                return [(str(item), float(w)) for item, w in conn.execute(query) if w > 0]
        except DBAPIError as e:
            raise EventLogUnavailable(f"event log failed: {type(e.orig).__name__}") from e

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()


def open_event_log(url: str) -> SqlEventLog:
    """An event log on `url` with the database's schema migrated to the newest version."""
    log = SqlEventLog(url)
    try:
        log.migrate()
    except BaseException:
        log.close()
        raise
    return log


def _check(event: Event) -> None:
    if not 0 < len(event.user) <= _MAX_ID or not 0 < len(event.item) <= _MAX_ID:
        raise ValueError(f"user and item ids have 1 to {_MAX_ID} characters")
    if event.type not in EVENT_TYPES:
        raise ValueError(f"type: one of {', '.join(EVENT_TYPES)}")
    if event.at.tzinfo is None or event.at.utcoffset() is None:
        raise ValueError("at: a naive datetime; expected a timezone")
    if event.catalog is not None and not 0 < len(event.catalog) <= 64:
        raise ValueError("a catalog name has 1 to 64 characters")


def _values(tenant_id: str, event: Event, now: datetime) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "user_id": event.user,
        "item_id": event.item,
        "type": event.type,
        "at": event.at,
        "catalog": event.catalog,
        "received_at": now,
    }


def _stored(row: Row[Any]) -> StoredEvent:
    event = Event(row.user_id, row.item_id, row.type, row.at, row.catalog)
    return StoredEvent(int(row.seq), row.tenant_id, event, row.received_at)
