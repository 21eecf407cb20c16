"""Tenant catalogs on SQL: SQLite (embedded) and PostgreSQL (production), in the
registry's database, with the registry's engines, transactions and migration history.

The change log is what replicas follow: they poll `changes(after_seq)` with the last seq
they applied, so a change must never become visible after a change with a larger seq.
A sequence object cannot promise that on PostgreSQL (a writer may draw 7, another 8 and
commit first; a follower that read 8 would skip 7 for good). Every catalog write therefore
begins by updating the one row of `catalog_log_head`: that row lock (SQLite: the
`BEGIN IMMEDIATE` write lock) queues the writers, each draws its seqs from the head while
holding it, and releases it at commit. Seqs are thus handed out in commit order, and a
reader that sees a change also sees every smaller seq.

`changes()` joins the change rows to the items at read time: an upsert's `item` is the
item as it is NOW (a newer body if it was upserted again, None if it was deleted since).
A follower that applies the changes in order converges to the store's state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from stores.catalog import (
    CATALOG_CHANGE,
    NOT_UNICODE,
    CatalogInfo,
    Change,
    Item,
    attribute_problem,
    is_unicode,
    same_body,
)
from stores.registry_sql import (
    UtcDateTime,
    byte_ordered,
    create_sql_engine,
    migrate_database,
    reading_consistently,
    storable,
    writing,
)

_CATALOG_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
_MAX_TENANT_ID = 64  # as the registry's tenant ids
_MAX_ITEM_ID = 256
_MAX_SPACE = 200  # as the registry's model names
# Ids per `IN (...)`: far below either database's limit on bound parameters.
_CHUNK = 500


def _item_key() -> list[Column[str]]:
    return [
        Column("tenant_id", byte_ordered(_MAX_TENANT_ID), primary_key=True),
        Column("catalog", byte_ordered(64), primary_key=True),
        Column("item_id", byte_ordered(_MAX_ITEM_ID), primary_key=True),
    ]


# The tables as the code reads and writes them; migration 0002 creates them (and must agree).
metadata = MetaData()

catalogs_table = Table(
    "catalogs",
    metadata,
    Column("tenant_id", byte_ordered(_MAX_TENANT_ID), primary_key=True),
    Column("name", byte_ordered(64), primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("settings", JSON, nullable=False, server_default=text("'{}'")),  # migration 0003
)

items_table = Table(
    "catalog_items",
    metadata,
    *_item_key(),
    Column("text", JSON, nullable=False),
    Column("attributes", JSON, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("seq", BigInteger, nullable=False),  # the item's newest change
)

vectors_table = Table(
    "catalog_vectors",
    metadata,
    *_item_key(),
    Column("space", String(_MAX_SPACE), primary_key=True),
    Column("vector", LargeBinary, nullable=False),
    # The writers delete an item's vectors themselves; the key keeps any other writer of
    # this database from leaving vectors without their item.
    ForeignKeyConstraint(
        ["tenant_id", "catalog", "item_id"],
        [items_table.c.tenant_id, items_table.c.catalog, items_table.c.item_id],
        ondelete="CASCADE",
    ),
)

changes_table = Table(
    "catalog_changes",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("tenant_id", byte_ordered(_MAX_TENANT_ID), nullable=False),
    Column("catalog", byte_ordered(64), nullable=False),
    Column("item_id", byte_ordered(_MAX_ITEM_ID), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("at", UtcDateTime, nullable=False),
)

log_head = Table(
    "catalog_log_head",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1: one row
    Column("seq", BigInteger, nullable=False),  # the newest seq handed out
)


class SqlCatalogStore:
    """The `CatalogStore` on SQLite (`sqlite:///path/registry.db`) or PostgreSQL
    (`postgresql+psycopg://user@host/db`). Blocking and thread-safe: each call takes its
    own pooled connection. Every write takes the change log's lock first (see the module
    docstring), so catalog writes are serialized and never deadlock each other."""

    def __init__(self, url: str) -> None:
        """Connect lazily to `url`; call `migrate()` (or use `open_catalog_store`) first."""
        self.url = make_url(url)
        self._engine = create_sql_engine(url)
        self._insert = (
            sqlite.insert if self.url.get_backend_name() == "sqlite" else postgresql.insert
        )

    def migrate(self) -> None:
        """Bring the database's schema (shared with the registry) to the newest migration."""
        migrate_database(self._engine)

    # --- items ---

    def upsert(
        self,
        tenant_id: str,
        catalog: str,
        items: list[Item],
        vectors: dict[str, dict[str, bytes]] | None = None,
    ) -> int:
        """Insert or replace items (an id given twice: the last wins), one change each, in
        one transaction with their new `vectors` by space (float32 bytes by item id;
        those of ids not upserted are ignored); their other stored vectors are deleted
        (the text may have changed). A follower that sees the change thus sees the
        vectors the writer had. The catalog is created on its first upsert. The seq of
        the last change written (the head when `items` is empty)."""
        _check_catalog(tenant_id, catalog)
        latest = {_checked(item).id: item for item in items}
        _check_vectors(vectors or {})
        if not latest:
            return self.head()
        now = datetime.now(UTC)
        with writing(self._engine) as conn:
            first = _take_seqs(conn, len(latest))
            new_catalog = self._insert(catalogs_table).values(
                tenant_id=tenant_id, name=catalog, created_at=now
            )
            conn.execute(new_catalog.on_conflict_do_nothing())
            rows = [
                _item_values(tenant_id, catalog, item, now, first + i)
                for i, item in enumerate(latest.values())
            ]
            conn.execute(self._upsert_items(), rows)
            for chunk in _chunks(list(latest)):
                conn.execute(
                    delete(vectors_table).where(
                        _in_catalog(vectors_table, tenant_id, catalog, chunk)
                    )
                )
            conn.execute(insert(changes_table), [_change_values(r, deleted=False) for r in rows])
            self._write_vectors(conn, tenant_id, catalog, vectors or {}, latest)
        return first + len(latest) - 1

    def seed(
        self, tenant_id: str, catalog: str, items: list[Item], vectors: dict[str, dict[str, bytes]]
    ) -> int | None:
        """Create a catalog from a snapshot, items (one change each) and their vectors by
        space in one transaction, only if the catalog does not exist yet: the seq of its
        last change, or None when it existed (nothing is written). Replicas starting
        together may all call it; the catalog's row decides which one writes."""
        _check_catalog(tenant_id, catalog)
        latest = {_checked(item).id: item for item in items}
        if not latest:
            raise ValueError("a snapshot seeds at least one item")
        _check_vectors(vectors)
        now = datetime.now(UTC)
        with writing(self._engine) as conn:
            first = _take_seqs(conn, len(latest))
            new_catalog = self._insert(catalogs_table).values(
                tenant_id=tenant_id, name=catalog, created_at=now
            )
            created = new_catalog.on_conflict_do_nothing().returning(catalogs_table.c.name)
            if conn.execute(created).first() is None:
                conn.rollback()  # the catalog exists: its items are the truth
                return None
            rows = [
                _item_values(tenant_id, catalog, item, now, first + i)
                for i, item in enumerate(latest.values())
            ]
            conn.execute(self._upsert_items(), rows)
            conn.execute(insert(changes_table), [_change_values(r, deleted=False) for r in rows])
            self._write_vectors(conn, tenant_id, catalog, vectors, latest)
        return first + len(latest) - 1

    def _write_vectors(
        self,
        conn: Connection,
        tenant_id: str,
        catalog: str,
        vectors: dict[str, dict[str, bytes]],
        items: dict[str, Item],
    ) -> None:
        """Within a writer's transaction: the vectors of `items` (others ignored)."""
        for space, blobs in vectors.items():
            key = {"tenant_id": tenant_id, "catalog": catalog, "space": space}
            stored = [
                {**key, "item_id": item_id, "vector": blob}
                for item_id, blob in blobs.items()
                if item_id in items
            ]
            if stored:
                conn.execute(self._upsert_vectors(), stored)

    def delete(self, tenant_id: str, catalog: str, item_id: str) -> int | None:
        """Delete one item and its vectors; the change's seq, None when there was none."""
        _check_catalog(tenant_id, catalog)
        _check_item_id(item_id)
        with writing(self._engine) as conn:
            seq = _take_seqs(conn, 1)
            conn.execute(
                delete(vectors_table).where(
                    _in_catalog(vectors_table, tenant_id, catalog, [item_id])
                )
            )
            gone = conn.execute(
                delete(items_table).where(_in_catalog(items_table, tenant_id, catalog, [item_id]))
            )
            if gone.rowcount == 0:
                conn.rollback()  # nothing deleted: no change, the head stays
                return None
            row = {"tenant_id": tenant_id, "catalog": catalog, "item_id": item_id}
            conn.execute(
                insert(changes_table).values(seq=seq, deleted=True, at=datetime.now(UTC), **row)
            )
        return seq

    def get(self, tenant_id: str, catalog: str, item_id: str) -> Item | None:
        """One item of the tenant's catalog, or None (also for another tenant's)."""
        if not storable(tenant_id, catalog, item_id):
            return None
        query = select(items_table).where(_in_catalog(items_table, tenant_id, catalog, [item_id]))
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _item(row)

    def get_many(self, tenant_id: str, catalog: str, item_ids: list[str]) -> dict[str, Item]:
        """The items of these ids (missing ones left out): one read per 500 ids."""
        found: dict[str, Item] = {}
        if not storable(tenant_id, catalog):
            return found
        with reading_consistently(self._engine) as conn:
            for chunk in _chunks(sorted({i for i in item_ids if storable(i)})):
                query = select(items_table).where(
                    _in_catalog(items_table, tenant_id, catalog, chunk)
                )
                found.update((r.item_id, _item(r)) for r in conn.execute(query))
        return found

    def has_catalog(self, tenant_id: str, catalog: str) -> bool:
        """Whether the tenant has a catalog of that name (one indexed lookup)."""
        if not storable(tenant_id, catalog):
            return False
        query = select(catalogs_table.c.name).where(
            catalogs_table.c.tenant_id == tenant_id, catalogs_table.c.name == catalog
        )
        with self._engine.connect() as conn:
            return conn.execute(query).first() is not None

    def configure(self, tenant_id: str, catalog: str, settings: dict[str, Any]) -> int:
        """Replace a catalog's settings (creating the catalog), one change in the log
        (item id CATALOG_CHANGE) so that every replica applies them; the change's seq."""
        _check_catalog(tenant_id, catalog)
        now = datetime.now(UTC)
        with writing(self._engine) as conn:
            seq = _take_seqs(conn, 1)
            row = {"tenant_id": tenant_id, "name": catalog}
            upsert = self._insert(catalogs_table).values(**row, created_at=now, settings=settings)
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[catalogs_table.c.tenant_id, catalogs_table.c.name],
                    set_={"settings": settings},
                )
            )
            conn.execute(
                insert(changes_table).values(
                    seq=seq, tenant_id=tenant_id, catalog=catalog, item_id=CATALOG_CHANGE,
                    deleted=False, at=now,
                )
            )  # fmt: skip
        return seq

    def catalogs(self, tenant_id: str, name: str | None = None) -> list[CatalogInfo]:
        """The tenant's catalogs by name, with their item counts (only the one called
        `name`, when given: its items alone are counted)."""
        if not storable(tenant_id, name or ""):
            return []
        count = (
            select(func.count())
            .where(
                items_table.c.tenant_id == catalogs_table.c.tenant_id,
                items_table.c.catalog == catalogs_table.c.name,
            )
            .scalar_subquery()
        )
        query = (
            select(
                catalogs_table.c.name,
                catalogs_table.c.created_at,
                catalogs_table.c.settings,
                count.label("n_items"),
            )
            .where(catalogs_table.c.tenant_id == tenant_id)
            .order_by(catalogs_table.c.name)
        )
        if name is not None:
            query = query.where(catalogs_table.c.name == name)
        with reading_consistently(self._engine) as conn:
            return [
                CatalogInfo(tenant_id, r.name, int(r.n_items), r.created_at, dict(r.settings))
                for r in conn.execute(query)
            ]

    def scan(self, tenant_id: str, catalog: str, after_id: str | None, limit: int) -> list[Item]:
        """Items by id (byte order), after `after_id`, at most `limit`: each page is one
        consistent read, and paging visits every item that exists throughout once."""
        _check_limit(limit)
        if not storable(tenant_id, catalog):
            return []
        query = select(items_table).where(
            items_table.c.tenant_id == tenant_id, items_table.c.catalog == catalog
        )
        if after_id is not None:
            # No stored id holds NUL: past `p` NUL `q` are the ids past `p`.
            after_id = after_id.partition("\x00")[0]
            query = query.where(items_table.c.item_id > after_id)
        with self._engine.connect() as conn:
            page = conn.execute(query.order_by(items_table.c.item_id).limit(limit))
            return [_item(row) for row in page]

    # --- change log ---

    def head(self) -> int:
        """The newest seq (0 when the log is empty)."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(log_head.c.seq).where(log_head.c.id == 1)).scalar_one())

    def changes(self, after_seq: int, limit: int) -> list[Change]:
        """Changes with seq > `after_seq`, oldest first, at most `limit`, every tenant's.
        An upsert carries the item as it is now (None once deleted): see the module."""
        _check_limit(limit)
        query = (
            select(
                changes_table,
                items_table.c.text,
                items_table.c.attributes,
                items_table.c.updated_at,
                catalogs_table.c.settings,
            )
            .outerjoin(
                items_table,
                and_(
                    items_table.c.tenant_id == changes_table.c.tenant_id,
                    items_table.c.catalog == changes_table.c.catalog,
                    items_table.c.item_id == changes_table.c.item_id,
                ),
            )
            .outerjoin(
                catalogs_table,
                and_(
                    catalogs_table.c.tenant_id == changes_table.c.tenant_id,
                    catalogs_table.c.name == changes_table.c.catalog,
                    changes_table.c.item_id == CATALOG_CHANGE,
                ),
            )
            .where(changes_table.c.seq > after_seq)
            .order_by(changes_table.c.seq)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_change(row) for row in conn.execute(query)]

    # --- vectors ---

    def put_vectors(
        self,
        tenant_id: str,
        catalog: str,
        space: str,
        vectors: dict[str, bytes],
        made_from: dict[str, Item] | None = None,
    ) -> list[str]:
        """Store (or replace) embeddings of one space, float32 bytes by item id; items
        that do not exist (any more) are skipped, and with `made_from` (the items as
        they were embedded) so are those upserted since with another text or other
        attributes: a slow embedding never leaves the old text's vector for good. The
        ids written. Checked and written under the change log's lock, so no upsert
        commits between the check and the write."""
        _check_catalog(tenant_id, catalog)
        _check_space(space)
        for item_id, vector in vectors.items():
            _check_item_id(item_id)
            if not vector or len(vector) % 4:
                raise ValueError("a vector must be float32 bytes: a non-zero multiple of 4")
        written: list[str] = []
        if not vectors:
            return written
        with writing(self._engine) as conn:
            _lock_log(conn)
            for chunk in _chunks(sorted(vectors)):
                query = select(items_table).where(
                    _in_catalog(items_table, tenant_id, catalog, chunk)
                )
                present = [
                    row.item_id
                    for row in conn.execute(query)
                    if made_from is None
                    or (row.item_id in made_from and same_body(_item(row), made_from[row.item_id]))
                ]
                rows = [
                    {
                        "tenant_id": tenant_id,
                        "catalog": catalog,
                        "item_id": item_id,
                        "space": space,
                        "vector": vectors[item_id],
                    }
                    for item_id in sorted(present)
                ]
                if rows:
                    conn.execute(self._upsert_vectors(), rows)
                written.extend(sorted(present))
        return written

    def get_vectors(
        self, tenant_id: str, catalog: str, space: str, item_ids: list[str]
    ) -> dict[str, bytes]:
        """Stored embeddings of these items in one space (missing ones left out)."""
        found: dict[str, bytes] = {}
        if not storable(tenant_id, catalog, space):
            return found
        with reading_consistently(self._engine) as conn:
            for chunk in _chunks(sorted({i for i in item_ids if storable(i)})):
                query = select(vectors_table.c.item_id, vectors_table.c.vector).where(
                    _in_catalog(vectors_table, tenant_id, catalog, chunk),
                    vectors_table.c.space == space,
                )
                found.update((r.item_id, bytes(r.vector)) for r in conn.execute(query))
        return found

    def count_vectors(self, space: str, tenant_id: str | None = None) -> dict[tuple[str, str], int]:
        """How many embeddings of `space` are stored, per (tenant, catalog) that has any
        (of every tenant, or of `tenant_id`'s catalogs only). One grouped count: it
        reads the space's rows, for an operator's question (a rollback's), not a
        request's."""
        if not storable(space, tenant_id or ""):
            return {}
        t = vectors_table.c
        query = select(t.tenant_id, t.catalog, func.count()).where(t.space == space)
        if tenant_id is not None:
            query = query.where(t.tenant_id == tenant_id)
        query = query.group_by(t.tenant_id, t.catalog)
        with reading_consistently(self._engine) as conn:
            return {(r[0], r[1]): int(r[2]) for r in conn.execute(query)}

    def drop_space(self, space: str) -> int:
        """Delete every stored embedding of a retired space, every tenant's; how many."""
        _check_space(space)
        with writing(self._engine) as conn:
            _lock_log(conn)
            return int(
                conn.execute(delete(vectors_table).where(vectors_table.c.space == space)).rowcount
            )

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()

    # --- statements ---

    def _upsert_items(self) -> Any:
        stmt = self._insert(items_table)
        return stmt.on_conflict_do_update(
            index_elements=[items_table.c.tenant_id, items_table.c.catalog, items_table.c.item_id],
            set_={
                "text": stmt.excluded.text,
                "attributes": stmt.excluded.attributes,
                "updated_at": stmt.excluded.updated_at,
                "seq": stmt.excluded.seq,
            },
        )

    def _upsert_vectors(self) -> Any:
        stmt = self._insert(vectors_table)
        return stmt.on_conflict_do_update(
            index_elements=[
                vectors_table.c.tenant_id,
                vectors_table.c.catalog,
                vectors_table.c.item_id,
                vectors_table.c.space,
            ],
            set_={"vector": stmt.excluded.vector},
        )


def open_catalog_store(url: str) -> SqlCatalogStore:
    """A catalog store on `url` with the database's schema migrated to the newest version."""
    store = SqlCatalogStore(url)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


# --- the change log's lock ---


def _take_seqs(conn: Connection, n: int) -> int:
    """Lock the change log until commit and take `n` seqs from its head; the first.
    Must be the transaction's first write: writers queue here, in commit order."""
    bump = update(log_head).where(log_head.c.id == 1).values(seq=log_head.c.seq + n)
    conn.execute(bump)
    newest = int(conn.execute(select(log_head.c.seq).where(log_head.c.id == 1)).scalar_one())
    return newest - n + 1


def _lock_log(conn: Connection) -> None:
    """Lock the change log until commit without taking a seq (SQLite: the write lock of
    `BEGIN IMMEDIATE` already serializes; `FOR UPDATE` is not rendered there)."""
    conn.execute(select(log_head.c.seq).where(log_head.c.id == 1).with_for_update())


# --- input ---


def _check_catalog(tenant_id: str, catalog: str) -> None:
    if not 0 < len(tenant_id) <= _MAX_TENANT_ID:
        raise ValueError(f"a tenant id has 1 to {_MAX_TENANT_ID} characters")
    if not storable(tenant_id):
        raise ValueError("a tenant id has no NUL character")
    if not _CATALOG_NAME.fullmatch(catalog):
        raise ValueError(
            "a catalog name has 1 to 64 letters, digits, '_', '.' or '-', "
            "and begins with a letter or digit"
        )


def _check_item_id(item_id: str) -> None:
    if not 0 < len(item_id) <= _MAX_ITEM_ID:
        raise ValueError(f"an item id has 1 to {_MAX_ITEM_ID} characters")
    if not storable(item_id):
        raise ValueError("an item id has no NUL character")
    if not is_unicode(item_id):
        raise ValueError(f"an item id is {NOT_UNICODE}")


def _check_space(space: str) -> None:
    if not 0 < len(space) <= _MAX_SPACE or not storable(space):
        raise ValueError(f"an embedding space has 1 to {_MAX_SPACE} characters, no NUL")


def _check_vectors(vectors: dict[str, dict[str, bytes]]) -> None:
    for space, blobs in vectors.items():
        _check_space(space)
        if any(not b or len(b) % 4 for b in blobs.values()):
            raise ValueError("a vector must be float32 bytes: a non-zero multiple of 4")


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError("limit must not be negative")


def _checked(item: Item) -> Item:
    """`item` when its id, text fields and attributes have the types `Item` declares,
    every string valid Unicode: both backends would store a lone surrogate (escaped in
    the JSON), and every answer holding the item would then fail (no UTF-8 writer
    writes it)."""
    _check_item_id(item.id)
    for name, field in item.text.items():
        if not isinstance(name, str) or not isinstance(field, str):
            raise ValueError("an item's text maps field names to strings")
        if not is_unicode(name):
            raise ValueError(f"text: names are {NOT_UNICODE}")
        if not is_unicode(field):
            raise ValueError(f"text.{name}: {NOT_UNICODE}")
    for name, value in item.attributes.items():
        if not isinstance(name, str):
            raise ValueError("an item's attributes map names to values")
        if not is_unicode(name):
            raise ValueError(f"attributes: names are {NOT_UNICODE}")
        if (problem := attribute_problem(value)) is not None:
            raise ValueError(f"attributes.{name}: {problem}")
    return item


# --- rows and values ---


def _in_catalog(table: Table, tenant_id: str, catalog: str, item_ids: list[str]) -> Any:
    """These items of the tenant's catalog: every lookup carries the tenant."""
    return and_(
        table.c.tenant_id == tenant_id,
        table.c.catalog == catalog,
        table.c.item_id.in_(item_ids),
    )


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _item_values(
    tenant_id: str, catalog: str, item: Item, now: datetime, seq: int
) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "catalog": catalog,
        "item_id": item.id,
        "text": dict(item.text),
        "attributes": dict(item.attributes),
        "updated_at": now,
        "seq": seq,
    }


def _change_values(item_row: dict[str, Any], deleted: bool) -> dict[str, Any]:
    keys: Iterable[str] = ("seq", "tenant_id", "catalog", "item_id")
    return {**{k: item_row[k] for k in keys}, "deleted": deleted, "at": item_row["updated_at"]}


def _item(row: Row[Any]) -> Item:
    return Item(row.item_id, dict(row.text), dict(row.attributes), row.updated_at)


def _change(row: Row[Any]) -> Change:
    if row.item_id == CATALOG_CHANGE:  # the settings as they are now
        settings = dict(row.settings) if row.settings is not None else {}
        return Change(row.seq, row.tenant_id, row.catalog, row.item_id, None, settings)
    # No body: deleted by this change, or by a later one (whose change follows).
    body = None if row.deleted or row.text is None else _item(row)
    return Change(row.seq, row.tenant_id, row.catalog, row.item_id, body)
