"""The event log on SQL: SQLite (embedded) and PostgreSQL (production), in the registry's
database, with the registry's engines, transactions and migration history (0004; the
keys of batches appended once: 0008).

A write commits on its own, apart from its statements, so that the two failures read
apart: one before the commit kept nothing (`EventLogUnavailable`), one of the commit
itself may have kept everything (a connection lost after the server committed, before
its acknowledgement). Without a key that is `EventLogOutcomeUnknown`; with one, the
batch is looked up again on another connection: found, it was appended.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    Row,
    SmallInteger,
    String,
    Table,
    Text,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import RootTransaction
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from stores.events import (
    BATCH_RETENTION_S,
    EVENT_TYPES,
    MAX_BATCH_KEY,
    Appended,
    BatchKey,
    BatchKeyReused,
    Event,
    EventLogOutcomeUnknown,
    EventLogUnavailable,
    StoredEvent,
)
from stores.registry_sql import (
    UtcDateTime,
    byte_ordered,
    create_sql_engine,
    migrate_database,
    storable,
)

_MAX_ID = 256
# The first key of the event log's advisory locks on PostgreSQL (the second: the tenant).
_LOCK_SPACE = 0x5E4E
_T = TypeVar("_T")


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
# The batches appended with a key (migration 0008): the key, a digest of the batch, its
# seqs and what its answer said, kept `BATCH_RETENTION_S`. `merged`: 1 while the call
# that appended the events (or a repeat that took them over) merges them into the
# online rows, and after; 0 when that did not happen, so a repeat does it.
batches_table = Table(
    "event_batches",
    metadata,
    Column("tenant_id", byte_ordered(64), primary_key=True),
    Column("batch_key", byte_ordered(MAX_BATCH_KEY), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("accepted", Integer, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("merged", SmallInteger, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_event_batches_tenant_created", "tenant_id", "created_at"),
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SqlEventLog:
    """The `EventLog` on SQLite or PostgreSQL. Blocking and thread-safe: each call
    takes its own pooled connection."""

    def __init__(self, url: str, clock: Callable[[], datetime] = _utc_now) -> None:
        """Connect lazily to `url`; call `migrate()` (or use `open_event_log`) first.
        `clock`: aware UTC now (events' receipt, batch keys' age)."""
        self._engine = create_sql_engine(url)
        self._clock = clock

    def migrate(self) -> None:
        """Bring the database's schema (shared with the registry) to the newest migration."""
        migrate_database(self._engine)

    def append(self, tenant_id: str, events: list[Event]) -> int:
        """Append events in one transaction (durable when it returns); the last seq, 0
        when `events` is empty. `EventLogOutcomeUnknown` when the commit fails."""
        _check_batch(tenant_id, events)
        if not events:
            return 0
        now = self._clock()
        rows = [_values(tenant_id, e, now) for e in events]

        def work(conn: Connection) -> int:
            self._lock_tenant(conn, tenant_id)
            return self._insert(conn, rows)[1]

        return self._write(work)

    def append_once(
        self,
        tenant_id: str,
        events: list[Event],
        key: BatchKey,
        outcome: Mapping[str, Any],
    ) -> Appended:
        """Append `events` with `key`, or answer the batch the tenant kept with it (see
        `stores.events.EventLog.append_once`). Under the tenant's lock (PostgreSQL) or
        the write lock (SQLite), so a repeat sent while the first is still committing
        waits for it and then finds it."""
        _check_batch(tenant_id, events)
        if not events:
            raise ValueError("append_once: a batch of no events keeps no key")
        if not 0 < len(key.key) <= MAX_BATCH_KEY or not key.key.isprintable():
            raise ValueError(f"a batch key has 1 to {MAX_BATCH_KEY} printable characters")
        if not 0 < len(key.fingerprint) <= 64:
            raise ValueError("a batch fingerprint has 1 to 64 characters")
        now = self._clock()
        rows = [_values(tenant_id, e, now) for e in events]
        kept = json.dumps(dict(outcome), separators=(",", ":"), sort_keys=True)
        b = batches_table.c
        mine = (b.tenant_id == tenant_id) & (b.batch_key == key.key)
        answers: list[Appended] = []  # what the transaction found, for a failed commit

        def work(conn: Connection) -> Appended:
            self._lock_tenant(conn, tenant_id)
            cutoff = now - timedelta(seconds=BATCH_RETENTION_S)
            conn.execute(
                delete(batches_table).where(b.tenant_id == tenant_id, b.created_at < cutoff)
            )
            row = conn.execute(select(batches_table).where(mine)).one_or_none()
            if row is not None:
                answers.append(_repeat(conn, row, key, mine))
                return answers[0]
            first, last = self._insert(conn, rows)
            conn.execute(
                insert(batches_table).values(
                    tenant_id=tenant_id, batch_key=key.key, fingerprint=key.fingerprint,
                    first_seq=first, last_seq=last, accepted=len(rows), outcome=kept,
                    merged=1, created_at=now,
                )
            )  # fmt: skip
            answers.append(Appended(last, first, len(rows), False, True, dict(outcome)))
            return answers[0]

        try:
            return self._write(work)
        except EventLogOutcomeUnknown as e:
            if not answers:
                raise EventLogUnavailable(str(e)) from e
            found = answers[0]
            if found.repeat and not found.merge:
                return found  # it wrote nothing of its own: the answer stands
            # A repeat taking over the merge is not retried blind (two could merge); an
            # append is looked up: this call's seqs under the key, or not appended.
            if found.repeat or self._kept_seq(mine) != found.seq:
                raise EventLogUnavailable(f"{e}; the batch was not appended") from e
            return found

    def batch_merged(self, tenant_id: str, key: str, merged: bool) -> None:
        """Record whether the batch kept with `key` is in the online rows."""
        b = batches_table.c
        change = (
            update(batches_table)
            .where(b.tenant_id == tenant_id, b.batch_key == key)
            .values(merged=int(merged))
        )
        try:
            self._write(lambda conn: conn.execute(change))
        except EventLogOutcomeUnknown as e:
            raise EventLogUnavailable(str(e)) from e

    def _kept_seq(self, mine: ColumnElement[bool]) -> int | None:
        """The last seq of the batch kept with a key, read on a connection of its own;
        `EventLogUnavailable` when the database does not answer."""
        try:
            with self._engine.connect() as conn:
                seq = conn.execute(select(batches_table.c.last_seq).where(mine)).scalar()
        except DBAPIError as e:
            raise EventLogUnavailable(f"event log failed: {type(e.orig).__name__}") from e
        return None if seq is None else int(seq)

    def _write(self, work: Callable[[Connection], _T]) -> _T:
        """`work` in one write transaction, then its commit. `EventLogUnavailable` when
        anything before the commit fails (rolled back: nothing kept);
        `EventLogOutcomeUnknown` when the commit does."""
        try:
            with self._engine.connect() as conn:
                # SQLite: take the write lock up front (see `registry_sql.writing`).
                conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
                tx = conn.begin()
                try:
                    result = work(conn)
                except BaseException:
                    tx.rollback()
                    raise
                try:
                    self._commit(tx)
                except DBAPIError as e:
                    name = type(e.orig).__name__
                    raise EventLogOutcomeUnknown(f"event log failed to commit: {name}") from e
                return result
        except DBAPIError as e:  # the database: down, unreachable, refusing
            raise EventLogUnavailable(f"event log failed: {type(e.orig).__name__}") from e

    def _commit(self, tx: RootTransaction) -> None:
        tx.commit()  # a seam: the tests lose a commit's acknowledgement here

    def _lock_tenant(self, conn: Connection, tenant_id: str) -> None:
        """PostgreSQL hands out a BIGSERIAL's numbers at insert, not at commit: two
        appends of one tenant could commit out of order, and a reader that had scanned
        past the later one's seq would never see the earlier one. The tenant's lock,
        held until commit, queues its appends (and its batch keys' checks), so its seqs
        become visible in order; other tenants' appends do not wait. SQLite's write lock,
        taken at BEGIN IMMEDIATE, does the same for every tenant."""
        if self._engine.dialect.name != "sqlite":
            lock = func.pg_advisory_xact_lock(_LOCK_SPACE, func.hashtext(tenant_id))
            conn.execute(select(lock))

    def _insert(self, conn: Connection, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert a batch's rows in one statement; its first and last seq."""
        if self._engine.dialect.name == "sqlite":
            # The seq is SQLite's rowid, and this transaction holds the database's write
            # lock, so the batch's rowids follow one another up to the connection's last.
            conn.execute(insert(events_table), rows)
            last = int(conn.execute(select(func.last_insert_rowid())).scalar_one())
            return last - len(rows) + 1, last
        seqs = [
            int(s)
            for s in conn.execute(
                insert(events_table).returning(events_table.c.seq), rows
            ).scalars()
        ]
        return min(seqs), max(seqs)

    def scan(self, tenant_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """The tenant's events after `after_seq`, oldest first, at most `limit`."""
        if not storable(tenant_id):
            return []
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
        if not storable(tenant_id, user):
            return []
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
        if not any(w > 0 for w in weights.values()) or not storable(tenant_id, catalog or ""):
            return []  # nothing weighs anything (or can be stored): no item is popular
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


def _repeat(conn: Connection, row: Row[Any], key: BatchKey, mine: ColumnElement[bool]) -> Appended:
    """The batch kept with a key, for a repeat of it: nothing appended; the repeat takes
    over merging its events when the first call never did."""
    if row.fingerprint != key.fingerprint:
        raise BatchKeyReused("the key was kept with another batch")
    take_over = row.merged == 0
    if take_over:
        conn.execute(update(batches_table).where(mine).values(merged=1))
    seqs = int(row.last_seq), int(row.first_seq)
    return Appended(*seqs, int(row.accepted), True, take_over, json.loads(row.outcome))


def _check_batch(tenant_id: str, events: list[Event]) -> None:
    if not 0 < len(tenant_id) <= 64 or not storable(tenant_id):
        raise ValueError("a tenant id has 1 to 64 characters and no NUL")
    for event in events:
        _check(event)


def _check(event: Event) -> None:
    if not 0 < len(event.user) <= _MAX_ID or not 0 < len(event.item) <= _MAX_ID:
        raise ValueError(f"user and item ids have 1 to {_MAX_ID} characters")
    if not storable(event.user, event.item, event.catalog or ""):
        # PostgreSQL's text holds no NUL (SQLite's does): refused alike on both, not a
        # store failure that a retry could never get past.
        raise ValueError("user, item and catalog hold no NUL character")
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
