"""The tenant registry on SQL: SQLite (the embedded default) and PostgreSQL (production).

One SQLAlchemy Core layer serves both. Every write to tenants or keys bumps `meta.generation`
in its own transaction, first, so writers queue on that one row (or, in SQLite, on the
database's write lock) and a reader that sees a generation also sees what it covers.
The schema is owned by the alembic migrations in `stores/migrations/`; `migrate()` runs them.
The catalog store (`stores/catalog_sql.py`) lives in the same database and shares the
migration history and the engine and transaction helpers below (`create_sql_engine`,
`migrate_database`, `writing`, `reading_consistently`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Date,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    bindparam,
    case,
    create_engine,
    event,
    func,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from stores.tenants import (
    ApiKey,
    RateLimits,
    Snapshot,
    Tenant,
    TooManyKeys,
    UsageRow,
    new_id,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Alembic's bookkeeping table, named for this schema so that a PostgreSQL database shared
# with other alembic-managed applications keeps their versions apart.
VERSION_TABLE = "registry_schema_version"
# Any constant: the PostgreSQL advisory lock that lets one process at a time migrate.
_MIGRATE_LOCK_ID = 0x5E7E_4E61
# How long SQLite waits for another process's write to finish before "database is locked".
_SQLITE_BUSY_TIMEOUT_S = 30.0
_MIGRATE_ATTEMPTS = 5


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both dialects: `timestamptz` in PostgreSQL; in
    SQLite, which has no time zones, naive UTC text that is read back as aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes (their zone is a guess); store UTC."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: expected a timezone")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware UTC, whatever the session's time zone."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# The tables as the code reads and writes them; the migrations create them (and must agree).
metadata = MetaData()


def byte_ordered(length: int) -> String:
    """A string column compared byte by byte on PostgreSQL too ("C"), as SQLite does:
    key columns, whose order paging and listings rely on (see migration 0002)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("requests_per_s", Float),
    Column("texts_per_s", Float),
    Column("monthly_texts", BigInteger),
    Column("disabled", Boolean, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(64), ForeignKey("tenants.id"), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("scopes", Text, nullable=False),  # JSON list, sorted
    Column("models", Text),  # JSON list, sorted; NULL: every model
    Column("may_pin", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime),
    Column("revoked_at", UtcDateTime),
    Column("rotated_at", UtcDateTime),  # migration 0007
    Column("replaced_by", String(64)),  # migration 0009: the key a rotation issued
    Column("requests_per_s", Float),
    Column("texts_per_s", Float),
    Column("monthly_texts", BigInteger),
    Index("ix_api_keys_prefix", "prefix"),
    Index("ix_api_keys_tenant_id", "tenant_id"),
)

# No foreign key to tenants: usage is flushed in batches by every replica, and one row
# naming an unknown tenant must not cost the whole batch.
usage = Table(
    "usage",
    metadata,
    # Byte order on PostgreSQL as in SQLite (migration 0006): a day's rows by model name.
    Column("tenant_id", byte_ordered(64), primary_key=True),
    Column("model", byte_ordered(200), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("texts", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
)

# Texts the embedded limiter admitted per subject and month (migration 0005).
month_texts = Table(
    "month_texts",
    metadata,
    Column("subject", String(200), primary_key=True),
    Column("month", Integer, primary_key=True),  # YYYYMM, UTC
    Column("texts", BigInteger, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1: one row
    Column("generation", BigInteger, nullable=False),
)

_BUMP = update(meta).where(meta.c.id == 1).values(generation=meta.c.generation + 1)


class SqlRegistry:
    """The `Registry` on SQLite (`sqlite:///path/registry.db`) or PostgreSQL
    (`postgresql+psycopg://user@host/db`). Blocking and thread-safe: each call takes its
    own pooled connection, so callers may use it from several threads at once."""

    def __init__(self, url: str) -> None:
        """Connect lazily to `url`; call `migrate()` (or use `open_registry`) before use."""
        self.url = make_url(url)
        self._sqlite = self.url.get_backend_name() == "sqlite"
        self._engine = create_sql_engine(url)

    # --- schema ---

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent; safe when several
        processes start at once: PostgreSQL takes an advisory lock, SQLite its write lock)."""
        migrate_database(self._engine)

    # --- tenants ---

    def create_tenant(self, name: str, limits: RateLimits, tenant_id: str | None = None) -> Tenant:
        """A new tenant; `tenant_id` is generated unless given. Duplicate id: ValueError."""
        tenant = Tenant(tenant_id or new_id("tn"), name, datetime.now(UTC), limits)
        if not storable(tenant.id):
            raise ValueError(f"tenant id {tenant.id!r} holds a NUL character")
        # What PostgreSQL alone would refuse (a DataError), refused alike on both.
        if not 0 < len(tenant.id) <= 64:
            raise ValueError("a tenant id has 1 to 64 characters")
        if not storable(name):
            raise ValueError("a tenant's name holds no NUL character")
        _check_limits(limits)
        try:
            with self._writing(bump=True) as conn:
                conn.execute(tenants.insert().values(_tenant_values(tenant)))
        except IntegrityError as e:
            raise ValueError(f"tenant {tenant.id!r} already exists") from e
        return tenant

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        """One tenant, or None."""
        if not storable(tenant_id):
            return None
        with self._engine.connect() as conn:
            row = conn.execute(select(tenants).where(tenants.c.id == tenant_id)).first()
        return None if row is None else _tenant(row)

    def list_tenants(self) -> list[Tenant]:
        """Every tenant, oldest first."""
        with self._engine.connect() as conn:
            return _all_tenants(conn)

    def update_tenant(
        self,
        tenant_id: str,
        limits: RateLimits | None = None,
        disabled: bool | None = None,
        limit_fields: Collection[str] | None = None,
    ) -> Tenant | None:
        """Change a tenant's limits or disabled flag; None when there is no such tenant.
        `limit_fields`: the limits that change (default: all of them); the others keep
        their stored values, read and written in one transaction (writers queue on the
        generation bump, so two changes of different limits both hold)."""
        if not storable(tenant_id):
            return None
        if limits is not None:
            _check_limits(limits)
        with self._writing(bump=True) as conn:
            row = conn.execute(select(tenants).where(tenants.c.id == tenant_id)).first()
            if row is None:
                conn.rollback()  # nothing written: the generation stays
                return None
            tenant = _tenant(row)
            if limits is not None:
                limits = tenant.limits.changed(limits, limit_fields)
            tenant = replace(
                tenant,
                limits=tenant.limits if limits is None else limits,
                disabled=tenant.disabled if disabled is None else disabled,
            )
            values = _tenant_values(tenant)
            conn.execute(tenants.update().where(tenants.c.id == tenant_id).values(values))
        return tenant

    # --- keys ---

    def add_key(self, key: ApiKey, max_live: int | None = None) -> None:
        """Store a new key (its tenant must exist: else KeyError; a key with the same id
        or hash exists: ValueError); with `max_live`, not when the tenant holds that many
        live keys at the key's creation (`TooManyKeys`; the tenant's row is locked for
        the count, so two at once cannot both pass it)."""
        if not storable(key.tenant_id):
            raise KeyError(key.tenant_id)
        if not storable(key.id, key.name, key.prefix):
            raise ValueError("a key's id, name and prefix hold no NUL character")
        _check_limits(key.limits)
        try:
            with self._writing(bump=True) as conn:
                tenant = select(tenants.c.id).where(tenants.c.id == key.tenant_id)
                if conn.execute(tenant.with_for_update()).first() is None:
                    raise KeyError(key.tenant_id)
                if max_live is not None:
                    held = _live_keys(conn, key.tenant_id, key.created_at)
                    if held >= max_live:
                        raise TooManyKeys(
                            f"{held} live keys, the most a tenant holds; revoke one first"
                        )
                conn.execute(api_keys.insert().values(_key_values(key)))
        except IntegrityError:
            # Not chained: PostgreSQL's message quotes the duplicate value, the hash.
            raise ValueError(f"key {key.id!r} or its hash already exists") from None

    def get_key(self, tenant_id: str, key_id: str) -> ApiKey | None:
        """One key of a tenant, or None (also for another tenant's key)."""
        if not storable(tenant_id, key_id):
            return None
        with self._engine.connect() as conn:
            return _one_key(conn, tenant_id, key_id)

    def list_keys(self, tenant_id: str) -> list[ApiKey]:
        """A tenant's keys, revoked and expired included, oldest first."""
        if not storable(tenant_id):
            return []
        query = (
            select(api_keys)
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.created_at, api_keys.c.id)
        )
        with self._engine.connect() as conn:
            return [_key(row) for row in conn.execute(query)]

    def revoke_key(self, tenant_id: str, key_id: str, at: datetime) -> ApiKey | None:
        """Revoke at `at` (kept if already revoked earlier); None when not the tenant's."""
        return self._set_earliest(api_keys.c.revoked_at, tenant_id, key_id, at)

    def rotate_out(
        self,
        tenant_id: str,
        key_id: str,
        until: datetime,
        now: datetime,
        replaced_by: str | None = None,
    ) -> ApiKey | None:
        """Mark a key rotated at `now` (by the key `replaced_by`), valid until `until`
        at the latest, in one step and only once: None when it is not the tenant's key,
        was rotated already, or is revoked (a revocation that came first stands: no
        replacement outlives it)."""
        if not storable(tenant_id, key_id):
            return None
        when = bindparam("until", until, type_=UtcDateTime)
        column = api_keys.c.expires_at
        earliest = case((column.is_(None) | (column > when), when), else_=column)
        with self._writing(bump=True) as conn:
            changed = conn.execute(
                api_keys.update()
                .where(
                    api_keys.c.id == key_id,
                    api_keys.c.tenant_id == tenant_id,
                    api_keys.c.rotated_at.is_(None),
                    api_keys.c.revoked_at.is_(None),
                )
                .values(
                    expires_at=earliest,
                    rotated_at=bindparam("now", now, type_=UtcDateTime),
                    replaced_by=replaced_by,
                )
            )
            if changed.rowcount == 0:
                conn.rollback()
                return None
            return _one_key(conn, tenant_id, key_id)

    def expire_key(self, tenant_id: str, key_id: str, at: datetime) -> ApiKey | None:
        """Set the expiry to `at` unless it already expires earlier; None when not found."""
        return self._set_earliest(api_keys.c.expires_at, tenant_id, key_id, at)

    def _set_earliest(
        self, column: Column[Any], tenant_id: str, key_id: str, at: datetime
    ) -> ApiKey | None:
        """Set a key's timestamp to `at` unless it is already earlier, in SQL, so that
        concurrent calls keep the earliest whatever their order."""
        if not storable(tenant_id, key_id):
            return None
        when = bindparam("at", at, type_=UtcDateTime)
        earliest = case((column.is_(None) | (column > when), when), else_=column)
        with self._writing(bump=True) as conn:
            changed = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant_id)
                .values({column.name: earliest})
            )
            if changed.rowcount == 0:
                conn.rollback()  # not this tenant's key: nothing written
                return None
            return _one_key(conn, tenant_id, key_id)

    # --- generation and snapshot ---

    def generation(self) -> int:
        """A number that changes with every write to tenants or keys (cheap to poll)."""
        with self._engine.connect() as conn:
            return _generation(conn)

    def snapshot(self, live_at: datetime | None = None) -> Snapshot:
        """Every tenant and key, consistently, with the generation they belong to; with
        `live_at`, without the keys revoked or expired by then (for good)."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if live_at is not None:
            query = query.where(_live(live_at))
        with reading_consistently(self._engine) as conn:
            generation = _generation(conn)
            found = {t.id: t for t in _all_tenants(conn)}
            keys = conn.execute(query)
            return Snapshot(generation, found, [_key(row) for row in keys])

    # --- usage ---

    def add_usage(self, rows: list[UsageRow]) -> None:
        """Add these counts to the stored ones (one transaction, rows may repeat)."""
        merged = _merge_usage(rows)
        if not merged:
            return
        insert = (sqlite.insert if self._sqlite else postgresql.insert)(usage)
        upsert = insert.on_conflict_do_update(
            index_elements=[usage.c.tenant_id, usage.c.model, usage.c.day],
            set_={
                "requests": usage.c.requests + insert.excluded.requests,
                "texts": usage.c.texts + insert.excluded.texts,
                "errors": usage.c.errors + insert.excluded.errors,
            },
        )
        params = [
            {
                "tenant_id": r.tenant_id,
                "model": r.model,
                "day": r.day,
                "requests": r.requests,
                "texts": r.texts,
                "errors": r.errors,
            }
            for r in merged
        ]
        # Usage is not part of the snapshot: no generation bump.
        with self._writing() as conn:
            conn.execute(upsert, params)

    def usage(self, tenant_id: str, start: date, end: date) -> list[UsageRow]:
        """A tenant's rows for days in [start, end], by day then model."""
        if not storable(tenant_id):
            return []
        query = (
            select(usage)
            .where(usage.c.tenant_id == tenant_id, usage.c.day >= start, usage.c.day <= end)
            .order_by(usage.c.day, usage.c.model)
        )
        with self._engine.connect() as conn:
            return [
                UsageRow(r.tenant_id, r.model, r.day, r.requests, r.texts, r.errors)
                for r in conn.execute(query)
            ]

    # --- monthly quota counts (the embedded limiter's) ---

    def add_month_texts(self, counts: dict[tuple[int, str], int]) -> None:
        """Add texts per (month, subject) to the stored counts, in one transaction."""
        if not counts:
            return
        insert = (sqlite.insert if self._sqlite else postgresql.insert)(month_texts)
        upsert = insert.on_conflict_do_update(
            index_elements=[month_texts.c.subject, month_texts.c.month],
            set_={"texts": month_texts.c.texts + insert.excluded.texts},
        )
        params = [
            {"subject": subject, "month": month, "texts": n}
            for (month, subject), n in sorted(counts.items())
        ]
        with self._writing() as conn:
            conn.execute(upsert, params)

    def month_texts(self, month: int) -> dict[str, int]:
        """Every subject's stored count of `month` (YYYYMM)."""
        query = select(month_texts.c.subject, month_texts.c.texts).where(
            month_texts.c.month == month
        )
        with self._engine.connect() as conn:
            return {str(subject): int(n) for subject, n in conn.execute(query)}

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()

    # --- transactions ---

    @contextmanager
    def _writing(self, bump: bool = False) -> Iterator[Connection]:
        """A write transaction, committed on exit. `bump`: the generation is bumped first,
        which queues the writers."""
        with writing(self._engine) as conn:
            if bump:
                conn.execute(_BUMP)
            yield conn


def open_registry(url: str) -> SqlRegistry:
    """A registry on `url` with its schema migrated to the newest version."""
    registry = SqlRegistry(url)
    try:
        registry.migrate()
    except BaseException:
        registry.close()
        raise
    return registry


# --- engines, transactions and migrations (shared with the catalog store) ---


def _check_limits(limits: RateLimits) -> None:
    """Limits both databases hold alike: SQLite reads a NaN back as NULL (unlimited),
    PostgreSQL as NaN."""
    for value in (limits.requests_per_s, limits.texts_per_s, limits.monthly_texts):
        if value is not None and not math.isfinite(value):
            raise ValueError("limits are finite numbers")


def storable(*texts: str) -> bool:
    """Whether both backends can hold these strings in a text column: PostgreSQL's
    cannot hold NUL (SQLite's can), so no stored key holds one, and a lookup of one
    finds nothing on both (instead of a `DataError` on PostgreSQL alone, a 500 for an
    id from a request's path)."""
    return not any("\x00" in t for t in texts)


def create_sql_engine(url: str) -> Engine:
    """An engine for `url`, SQLite or PostgreSQL, set up as the stores expect. Its errors
    name no bound values (`hide_parameters`): a failed write would otherwise put a key's
    hash, or a tenant's data, into the traceback that the service logs."""
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return _pg_engine(url)


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction, committed on exit. SQLite: `BEGIN IMMEDIATE`, so that it
    waits for the write lock up front instead of failing when a read turns into a write
    (and so that writers are serialized from their first statement)."""
    with engine.connect() as conn:
        conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        with conn.begin():
            yield conn


@contextmanager
def reading_consistently(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction whose statements all see one moment. SQLite's (WAL)
    reads do already; PostgreSQL's default isolation gives each statement its own."""
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


def migrate_database(engine: Engine) -> None:
    """Bring the database's schema (registry and catalogs: one history) to the newest
    migration. Idempotent; safe when several processes start at once: PostgreSQL takes an
    advisory lock, SQLite its write lock."""
    sqlite_db = engine.dialect.name == "sqlite"
    for attempt in range(_MIGRATE_ATTEMPTS):
        try:
            _upgrade(engine)
            return
        except OperationalError as e:
            # The busy timeout already waited; a lock taken while opening the file
            # (switching it to WAL) is the one case worth another try.
            if not sqlite_db or "locked" not in str(e) or attempt + 1 == _MIGRATE_ATTEMPTS:
                raise
            time.sleep(0.2 * (attempt + 1))


def _upgrade(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with writing(engine) as conn:
        if engine.dialect.name != "sqlite":
            # Released at commit: the second process then finds the schema current.
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATE_LOCK_ID})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _sqlite_engine(url: str) -> Engine:
    """SQLite shared by several processes: WAL (readers never wait for the writer), a busy
    timeout (writers wait for each other), foreign keys enforced, and transactions begun by
    SQLAlchemy, not by the driver, so that `BEGIN IMMEDIATE` is possible."""
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_S},
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # The driver's own transaction handling would begin late and never IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))

    return engine


def _pg_engine(url: str) -> Engine:
    """PostgreSQL: pooled connections, checked before use (a server restart or an idle
    timeout closes them). The session's time zone is left alone (a pooler may refuse
    startup options): `UtcDateTime` converts whatever comes back."""
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


# --- rows and values ---


def _generation(conn: Connection) -> int:
    return int(conn.execute(select(meta.c.generation).where(meta.c.id == 1)).scalar_one())


def _all_tenants(conn: Connection) -> list[Tenant]:
    query = select(tenants).order_by(tenants.c.created_at, tenants.c.id)
    return [_tenant(row) for row in conn.execute(query)]


def _live(at: datetime) -> ColumnElement[bool]:
    """Keys neither revoked nor expired at `at` (as `ApiKey.live` reads them)."""
    return and_(
        or_(api_keys.c.revoked_at.is_(None), api_keys.c.revoked_at > at),
        or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > at),
    )


def _live_keys(conn: Connection, tenant_id: str, at: datetime) -> int:
    query = select(func.count()).select_from(api_keys)
    return int(conn.execute(query.where(api_keys.c.tenant_id == tenant_id, _live(at))).scalar_one())


def _one_key(conn: Connection, tenant_id: str, key_id: str) -> ApiKey | None:
    query = select(api_keys).where(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant_id)
    row = conn.execute(query).first()
    return None if row is None else _key(row)


def _limits(row: Row[Any]) -> RateLimits:
    return RateLimits(row.requests_per_s, row.texts_per_s, row.monthly_texts)


def _limit_values(limits: RateLimits) -> dict[str, Any]:
    return {
        "requests_per_s": limits.requests_per_s,
        "texts_per_s": limits.texts_per_s,
        "monthly_texts": limits.monthly_texts,
    }


def _tenant(row: Row[Any]) -> Tenant:
    return Tenant(row.id, row.name, row.created_at, _limits(row), bool(row.disabled))


def _tenant_values(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "created_at": tenant.created_at,
        "disabled": tenant.disabled,
        **_limit_values(tenant.limits),
    }


def _key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        prefix=row.prefix,
        key_hash=row.key_hash,
        name=row.name,
        scopes=frozenset(json.loads(row.scopes)),
        models=None if row.models is None else frozenset(json.loads(row.models)),
        may_pin=bool(row.may_pin),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        limits=_limits(row),
        rotated_at=row.rotated_at,
        replaced_by=row.replaced_by,
    )


def _key_values(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "prefix": key.prefix,
        "key_hash": key.key_hash,
        "name": key.name,
        "scopes": json.dumps(sorted(key.scopes)),
        "models": None if key.models is None else json.dumps(sorted(key.models)),
        "may_pin": key.may_pin,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "rotated_at": key.rotated_at,
        "replaced_by": key.replaced_by,
        **_limit_values(key.limits),
    }


def _merge_usage(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """One row per (tenant, model, day) (an upsert may not touch a row twice), in that
    order: every replica's batch then locks the rows it shares with another's in the
    same order. In the order a replica first counted them, two batches deadlocked on
    PostgreSQL (one flush in five failed, and waited a second for the next)."""
    merged: dict[tuple[str, str, date], UsageRow] = {}
    for r in rows:
        k = (r.tenant_id, r.model, r.day)
        seen = merged.get(k)
        merged[k] = (
            r
            if seen is None
            else replace(
                seen,
                requests=seen.requests + r.requests,
                texts=seen.texts + r.texts,
                errors=seen.errors + r.errors,
            )
        )
    return [merged[k] for k in sorted(merged)]
