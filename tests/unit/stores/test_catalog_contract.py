"""The `CatalogStore` contract: the same tests on SQLite (a file in tmp_path) and on a real
PostgreSQL server, in the registry's database."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from stores.catalog import CATALOG_CHANGE, NOT_UNICODE, CatalogStore, Change, Item, item_problem
from stores.catalog_sql import SqlCatalogStore, metadata, open_catalog_store
from stores.registry_sql import VERSION_TABLE, open_registry
from stores.tenants import RateLimits

SPACE = "minilm/v1"
OTHER_SPACE = "minilm/v2"


@pytest.fixture
def store(url: str) -> Iterator[SqlCatalogStore]:
    """A migrated catalog store on `url`."""
    s = open_catalog_store(url)
    yield s
    s.close()


def item(item_id: str, title: str = "a title", **attributes: str | int | float | bool) -> Item:
    """An item with one text field and the given attributes."""
    return Item(item_id, {"title": title}, dict(attributes))


def vec(*values: float) -> bytes:
    """float32 bytes."""
    return struct.pack(f"{len(values)}f", *values)


def same(got: Item | None, sent: Item) -> bool:
    """`got` is `sent` as stored: equal but for the store's `updated_at` (aware UTC)."""
    return (
        got is not None
        and got.updated_at is not None
        and got.updated_at.tzinfo == UTC
        and Item(got.id, got.text, got.attributes) == sent
    )


def test_sql_catalog_store_is_a_catalog_store(store: SqlCatalogStore) -> None:
    cs: CatalogStore = store  # checked by mypy
    assert cs.head() == 0
    assert cs.changes(0, 10) == []
    assert cs.catalogs("tn_a") == []


def test_upsert_get_scan_delete(store: SqlCatalogStore) -> None:
    shoe = Item(
        "shoe-1",
        {"title": "Trail shoe", "brand": "Acme"},
        {"price": 89.5, "stock": 3, "whole": 1.0, "sale": True, "tags": ["trail", "run"]},
    )
    before = datetime.now(UTC)
    assert store.upsert("tn_a", "shoes", [shoe, item("shoe-2"), item("shoe-3")]) == 3
    assert store.head() == 3
    got = store.get("tn_a", "shoes", "shoe-1")
    assert same(got, shoe)
    assert got is not None
    assert got.updated_at is not None
    assert before - timedelta(seconds=1) <= got.updated_at <= datetime.now(UTC)
    # Numbers and booleans keep their types.
    assert [type(got.attributes[k]) for k in ("price", "stock", "whole", "sale")] == [
        float,
        int,
        float,
        bool,
    ]
    assert store.get("tn_a", "shoes", "shoe-9") is None
    assert store.get("tn_a", "boots", "shoe-1") is None

    renamed = item("shoe-2", "Road shoe", color="red")
    assert store.upsert("tn_a", "shoes", [renamed]) == 4
    assert same(store.get("tn_a", "shoes", "shoe-2"), renamed)

    assert store.delete("tn_a", "shoes", "shoe-3") == 5
    assert store.get("tn_a", "shoes", "shoe-3") is None
    assert store.delete("tn_a", "shoes", "shoe-3") is None
    assert store.delete("tn_a", "shoes", "never") is None
    assert store.head() == 5
    assert [i.id for i in store.scan("tn_a", "shoes", None, 10)] == ["shoe-1", "shoe-2"]


def test_scan_pages_by_id_in_byte_order(store: SqlCatalogStore) -> None:
    ids = ["b", "a_1", "C", "a", "a-1", "é", "Z9", "0"]
    store.upsert("tn_a", "c", [item(i) for i in ids])
    pages: list[list[str]] = []
    after: str | None = None
    while page := store.scan("tn_a", "c", after, 3):
        pages.append([i.id for i in page])
        after = page[-1].id
    assert pages == [["0", "C", "Z9"], ["a", "a-1", "a_1"], ["b", "é"]]
    assert store.scan("tn_a", "c", "é", 3) == []
    assert store.scan("tn_a", "c", None, 0) == []


def test_an_id_given_twice_in_one_upsert_is_written_once(store: SqlCatalogStore) -> None:
    last = store.upsert("tn_a", "c", [item("x", "first"), item("y"), item("x", "second")])
    assert last == 2
    assert same(store.get("tn_a", "c", "x"), item("x", "second"))
    assert [c.item_id for c in store.changes(0, 10)] == ["x", "y"]


def test_an_empty_upsert_writes_nothing(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "c", [item("x")])
    assert store.upsert("tn_a", "c", []) == 1
    assert store.upsert("tn_a", "new", []) == 1
    assert [c.name for c in store.catalogs("tn_a")] == ["c"]


def test_tenants_never_see_each_others_items(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "shoes", [item("s1", "mine"), item("s2", "mine")])
    store.upsert("tn_b", "shoes", [item("s1", "theirs"), item("s3", "theirs")])
    store.put_vectors("tn_b", "shoes", SPACE, {"s1": vec(1.0), "s3": vec(3.0)})
    # Another tenant's ids never match: reads, deletes and vector writes.
    assert same(store.get("tn_a", "shoes", "s1"), item("s1", "mine"))
    assert store.get("tn_a", "shoes", "s3") is None
    assert [i.id for i in store.scan("tn_a", "shoes", None, 10)] == ["s1", "s2"]
    assert store.get_vectors("tn_a", "shoes", SPACE, ["s1", "s3"]) == {}
    assert store.delete("tn_a", "shoes", "s3") is None
    store.put_vectors("tn_a", "shoes", SPACE, {"s3": vec(9.0)})  # not tn_a's: skipped
    assert store.delete("tn_a", "shoes", "s1") is not None
    assert same(store.get("tn_b", "shoes", "s1"), item("s1", "theirs"))
    assert store.get_vectors("tn_b", "shoes", SPACE, ["s1", "s3"]) == {
        "s1": vec(1.0),
        "s3": vec(3.0),
    }
    assert [(c.name, c.items) for c in store.catalogs("tn_a")] == [("shoes", 1)]
    assert [(c.name, c.items) for c in store.catalogs("tn_b")] == [("shoes", 2)]


def test_changes_in_order_with_the_current_item(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "c", [item("x", "v1"), item("y")])  # 1, 2
    store.upsert("tn_b", "c", [item("x", "b")])  # 3
    store.upsert("tn_a", "c", [item("x", "v2")])  # 4
    store.delete("tn_a", "c", "y")  # 5
    log = store.changes(0, 100)
    assert [(c.seq, c.tenant_id, c.item_id) for c in log] == [
        (1, "tn_a", "x"),
        (2, "tn_a", "y"),
        (3, "tn_b", "x"),
        (4, "tn_a", "x"),
        (5, "tn_a", "y"),
    ]
    # An upsert carries the item as it is now: newer text, or none once deleted.
    assert same(log[0].item, item("x", "v2"))
    assert log[1].item is None
    assert same(log[2].item, item("x", "b"))
    assert log[4].item is None
    assert store.changes(2, 2) == log[2:4]
    assert store.changes(5, 10) == []
    assert store.changes(0, 0) == []
    with pytest.raises(ValueError, match="limit"):
        store.changes(0, -1)


def test_a_follower_applying_the_changes_converges(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "c", [item("x", "v1"), item("y"), item("z")])
    store.upsert("tn_a", "d", [item("x")])
    store.delete("tn_a", "c", "y")
    store.upsert("tn_a", "c", [item("y", "back"), item("x", "v2")])
    store.delete("tn_a", "c", "z")
    follower: dict[tuple[str, str, str], Item] = {}
    after = 0
    while batch := store.changes(after, 2):
        for change in batch:
            apply(follower, change)
        after = batch[-1].seq
    assert follower == stored(store, "tn_a", ["c", "d"])
    assert sorted(follower) == [("tn_a", "c", "x"), ("tn_a", "c", "y"), ("tn_a", "d", "x")]


def apply(follower: dict[tuple[str, str, str], Item], change: Change) -> None:
    """What a replica's cache does with one change."""
    key = (change.tenant_id, change.catalog, change.item_id)
    if change.item is None:
        follower.pop(key, None)
    else:
        follower[key] = change.item


def stored(
    store: SqlCatalogStore, tenant_id: str, catalogs: list[str]
) -> dict[tuple[str, str, str], Item]:
    """Every item of these catalogs, read with `scan`."""
    return {
        (tenant_id, catalog, i.id): i
        for catalog in catalogs
        for i in store.scan(tenant_id, catalog, None, 10_000)
    }


def test_concurrent_writers_every_change_is_seen_once_in_order(store: SqlCatalogStore) -> None:
    """A follower polling `changes(last_seq)` while 4 writers commit must miss nothing: on
    PostgreSQL a seq drawn before another writer's but committed after it would be
    skipped for good."""
    writers, rounds = 4, 50
    finished = threading.Event()
    errors: list[BaseException] = []
    seen: list[Change] = []

    def write(w: int) -> None:
        try:
            for r in range(rounds):
                if r % 10 == 9:
                    store.delete(f"tn_{w % 2}", "c", f"w{w}-{r - 1}-0")
                else:
                    store.upsert(f"tn_{w % 2}", "c", [item(f"w{w}-{r}-{k}") for k in range(2)])
        except BaseException as e:
            errors.append(e)

    def follow() -> None:
        after = 0
        try:
            while True:
                last_round = finished.is_set()  # before the read: it sees every commit
                batch = store.changes(after, 7)
                seen.extend(batch)
                after = batch[-1].seq if batch else after
                if last_round and not batch:
                    return
                if not batch:
                    time.sleep(0.001)
        except BaseException as e:
            errors.append(e)

    follower = threading.Thread(target=follow)
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    follower.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finished.set()
    follower.join()
    assert errors == []
    # 45 upserts of two items and 5 deletes per writer.
    head = store.head()
    assert head == writers * (45 * 2 + 5)
    assert [c.seq for c in seen] == list(range(1, head + 1))
    state: dict[tuple[str, str, str], Item] = {}
    for change in seen:
        apply(state, change)
    assert state == {**stored(store, "tn_0", ["c"]), **stored(store, "tn_1", ["c"])}
    assert len(state) == writers * (45 * 2 - 5)


def test_vectors_put_get_and_replace(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "c", [item("x"), item("y")])
    store.put_vectors("tn_a", "c", SPACE, {"x": vec(1, 2), "y": vec(3, 4), "gone": vec(5, 6)})
    store.put_vectors("tn_a", "c", OTHER_SPACE, {"x": vec(7, 8, 9)})
    got = store.get_vectors("tn_a", "c", SPACE, ["x", "y", "gone", "x"])
    assert got == {"x": vec(1, 2), "y": vec(3, 4)}  # an unknown item is skipped
    store.put_vectors("tn_a", "c", SPACE, {"x": vec(0, 1)})
    assert store.get_vectors("tn_a", "c", SPACE, ["x"]) == {"x": vec(0, 1)}
    assert store.get_vectors("tn_a", "c", OTHER_SPACE, ["x", "y"]) == {"x": vec(7, 8, 9)}
    assert store.get_vectors("tn_a", "other", SPACE, ["x"]) == {}
    assert store.get_vectors("tn_a", "c", SPACE, []) == {}
    store.put_vectors("tn_a", "c", SPACE, {})
    with pytest.raises(ValueError, match="float32"):
        store.put_vectors("tn_a", "c", SPACE, {"x": b"abc"})
    with pytest.raises(ValueError, match="float32"):
        store.put_vectors("tn_a", "c", SPACE, {"x": b""})


def test_an_upsert_or_delete_removes_the_items_vectors(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "c", [item("x"), item("y"), item("z")])
    for space in (SPACE, OTHER_SPACE):
        store.put_vectors("tn_a", "c", space, {"x": vec(1), "y": vec(2), "z": vec(3)})
    store.upsert("tn_a", "c", [item("x", "new text")])
    store.delete("tn_a", "c", "y")
    for space in (SPACE, OTHER_SPACE):
        assert store.get_vectors("tn_a", "c", space, ["x", "y", "z"]) == {"z": vec(3)}
    # A deleted and re-created item starts without vectors.
    store.upsert("tn_a", "c", [item("y")])
    assert store.get_vectors("tn_a", "c", SPACE, ["y"]) == {}


def test_count_vectors(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "c", [item("x"), item("y")])
    store.upsert("tn_a", "d", [item("x")])
    store.upsert("tn_b", "c", [item("x")])
    store.put_vectors("tn_a", "c", SPACE, {"x": vec(1), "y": vec(2)})
    store.put_vectors("tn_a", "d", SPACE, {"x": vec(1)})
    store.put_vectors("tn_b", "c", SPACE, {"x": vec(1)})
    store.put_vectors("tn_a", "c", OTHER_SPACE, {"x": vec(9)})
    assert store.count_vectors(SPACE) == {("tn_a", "c"): 2, ("tn_a", "d"): 1, ("tn_b", "c"): 1}
    assert store.count_vectors(SPACE, "tn_a") == {("tn_a", "c"): 2, ("tn_a", "d"): 1}
    assert store.count_vectors(OTHER_SPACE) == {("tn_a", "c"): 1}
    assert store.count_vectors("m/none") == {}
    assert store.count_vectors(SPACE, "tn\x00a") == {}
    store.delete("tn_a", "c", "y")
    assert store.count_vectors(SPACE, "tn_a")[("tn_a", "c")] == 1


def test_drop_space(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "c", [item("x"), item("y")])
    store.upsert("tn_b", "c", [item("x")])
    store.put_vectors("tn_a", "c", SPACE, {"x": vec(1), "y": vec(2)})
    store.put_vectors("tn_b", "c", SPACE, {"x": vec(1)})
    store.put_vectors("tn_a", "c", OTHER_SPACE, {"x": vec(9)})
    head = store.head()
    assert store.drop_space(SPACE) == 3
    assert store.drop_space(SPACE) == 0
    assert store.get_vectors("tn_a", "c", SPACE, ["x", "y"]) == {}
    assert store.get_vectors("tn_b", "c", SPACE, ["x"]) == {}
    assert store.get_vectors("tn_a", "c", OTHER_SPACE, ["x"]) == {"x": vec(9)}
    assert store.head() == head  # vectors are not part of the change log


def test_catalogs_are_created_on_first_upsert_and_counted(store: SqlCatalogStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    store.upsert("tn_a", "shoes", [item("a"), item("b")])
    store.upsert("tn_a", "boots", [item("a")])
    store.upsert("tn_b", "hats", [item("a")])
    first = store.catalogs("tn_a")
    assert [(c.tenant_id, c.name, c.items) for c in first] == [
        ("tn_a", "boots", 1),
        ("tn_a", "shoes", 2),
    ]
    assert all(before <= c.created_at <= datetime.now(UTC) for c in first)
    store.upsert("tn_a", "shoes", [item("c")])
    store.delete("tn_a", "boots", "a")
    later = store.catalogs("tn_a")
    assert [(c.name, c.items) for c in later] == [("boots", 0), ("shoes", 3)]
    assert [c.created_at for c in later] == [c.created_at for c in first]


def test_catalog_settings_are_stored_and_logged(store: SqlCatalogStore) -> None:
    store.upsert("tn_a", "shoes", [item("a")])
    seq = store.configure("tn_a", "shoes", {"hybrid": False})
    assert seq == store.head()
    created = store.configure("tn_a", "new", {"hybrid": True})  # creates the catalog
    store.configure("tn_b", "shoes", {"hybrid": True})  # another tenant's, same name
    by_name = {c.name: c for c in store.catalogs("tn_a")}
    assert by_name["shoes"].settings == {"hybrid": False}
    assert (by_name["new"].settings, by_name["new"].items) == ({"hybrid": True}, 0)
    assert [c.settings for c in store.catalogs("tn_b")] == [{"hybrid": True}]
    # One catalog by name: its own count and settings, none of another tenant's.
    assert [(c.name, c.items) for c in store.catalogs("tn_a", "shoes")] == [("shoes", 1)]
    assert store.catalogs("tn_a", "absent") == []
    assert [c.tenant_id for c in store.catalogs("tn_b", "shoes")] == ["tn_b"]
    # In the change log as a change of the catalog itself, with the settings as now.
    store.configure("tn_a", "shoes", {})
    logged = [c for c in store.changes(0, 100) if c.item_id == CATALOG_CHANGE]
    assert [(c.seq, c.tenant_id, c.catalog) for c in logged] == [
        (seq, "tn_a", "shoes"),
        (created, "tn_a", "new"),
        (created + 1, "tn_b", "shoes"),
        (created + 2, "tn_a", "shoes"),
    ]
    assert [c.settings for c in logged] == [{}, {"hybrid": True}, {"hybrid": True}, {}]
    assert all(c.item is None for c in logged)
    # Items are untouched and an upsert keeps the settings.
    store.configure("tn_a", "shoes", {"hybrid": True})
    store.upsert("tn_a", "shoes", [item("b")])
    shoes = next(c for c in store.catalogs("tn_a") if c.name == "shoes")
    assert (shoes.items, shoes.settings) == (2, {"hybrid": True})


INVALID_IDS = [
    ("", "c", "x", "tenant id"),
    ("t" * 65, "c", "x", "tenant id"),
    ("tn_a", "", "x", "catalog name"),
    ("tn_a", "-c", "x", "catalog name"),
    ("tn_a", "a/b", "x", "catalog name"),
    ("tn_a", "a b", "x", "catalog name"),
    ("tn_a", "c" * 65, "x", "catalog name"),
    ("tn_a", "c", "", "item id"),
    ("tn_a", "c", "x" * 257, "item id"),
]


def test_invalid_ids_are_refused(store: SqlCatalogStore) -> None:
    for tenant_id, catalog, item_id, message in INVALID_IDS:
        with pytest.raises(ValueError, match=message):
            store.upsert(tenant_id, catalog, [item(item_id)])
        with pytest.raises(ValueError, match=message):
            store.delete(tenant_id, catalog, item_id)
        with pytest.raises(ValueError, match=message):
            store.put_vectors(tenant_id, catalog, SPACE, {item_id: vec(1)})
    assert store.head() == 0


def test_limits_of_ids_are_accepted(store: SqlCatalogStore) -> None:
    longest, name = "é" * 256, "A" + "b._-" * 15 + "xyz"
    store.upsert("t" * 64, name, [item(longest)])
    assert same(store.get("t" * 64, name, longest), item(longest))


def test_invalid_items_and_arguments_are_refused(store: SqlCatalogStore) -> None:
    with pytest.raises(ValueError, match="text"):
        store.upsert("tn_a", "c", [Item("x", {"title": 3})])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="attributes"):
        store.upsert("tn_a", "c", [Item("x", {}, {"tags": ["a", 1]})])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="attributes"):
        store.upsert("tn_a", "c", [Item("x", {}, {"when": datetime.now(UTC)})])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="limit"):
        store.scan("tn_a", "c", None, -1)
    with pytest.raises(ValueError, match="space"):
        store.drop_space("")
    assert store.head() == 0


def test_durable_across_instances(url: str) -> None:
    first = open_catalog_store(url)
    try:
        first.upsert("tn_a", "c", [item("x", "kept"), item("y")])
        first.delete("tn_a", "c", "y")
        first.put_vectors("tn_a", "c", SPACE, {"x": vec(1, 2)})
    finally:
        first.close()
    again = SqlCatalogStore(url)  # no migrate: the schema is there
    try:
        assert same(again.get("tn_a", "c", "x"), item("x", "kept"))
        assert again.head() == 3
        assert [c.seq for c in again.changes(0, 10)] == [1, 2, 3]
        assert again.get_vectors("tn_a", "c", SPACE, ["x"]) == {"x": vec(1, 2)}
        assert [(c.name, c.items) for c in again.catalogs("tn_a")] == [("c", 1)]
        assert again.upsert("tn_a", "c", [item("z")]) == 4
    finally:
        again.close()


def test_migrate_twice_is_a_no_op(url: str) -> None:
    first = open_catalog_store(url)
    try:
        first.upsert("tn_a", "c", [item("x")])
        first.migrate()
        again = open_catalog_store(url)
        try:
            assert same(again.get("tn_a", "c", "x"), item("x"))
            assert again.head() == first.head() == 1
        finally:
            again.close()
    finally:
        first.close()


def _newest_migration() -> str:
    """The head of the one history, as the migrations directory declares it."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from stores.registry_sql import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_registry_and_catalogs_share_one_migration_history(url: str) -> None:
    from alembic.migration import MigrationContext

    registry = open_registry(url)  # migrates the catalog tables too
    catalog = SqlCatalogStore(url)
    try:
        assert catalog.upsert("tn_a", "c", [item("x")]) == 1
        tenant = registry.create_tenant("Acme", RateLimits())
        catalog.migrate()
        assert registry.get_tenant(tenant.id) == tenant
        with catalog._engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert context.get_current_heads() == (_newest_migration(),)
    finally:
        catalog.close()
        registry.close()


def test_migrations_match_the_tables_the_code_uses(store: SqlCatalogStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def ours(name: str | None, type_: str, _parent: object) -> bool:
        # The registry's tables are the registry contract's to compare.
        return type_ != "table" or name in metadata.tables

    with store._engine.connect() as conn:
        opts = {"version_table": VERSION_TABLE, "include_name": ours}
        context = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(context, metadata) == []


def test_seed_creates_a_catalog_once_with_its_vectors(store: SqlCatalogStore) -> None:
    items = [item("a", "first"), item("b", "second")]
    vectors = {"m/v1": {"a": vec(1, 0), "b": vec(0, 1), "gone": vec(1, 1)}}
    seq = store.seed("acme", "shop", items, vectors)
    assert seq == store.head()
    changes = store.changes(0, 10)
    assert [(c.item_id, c.item is not None) for c in changes] == [("a", True), ("b", True)]
    assert store.get_vectors("acme", "shop", "m/v1", ["a", "b", "gone"]) == {
        "a": vec(1, 0),
        "b": vec(0, 1),
    }
    # Replicas starting together all try: the catalog exists, nothing more is written.
    assert store.seed("acme", "shop", [item("c")], {}) is None
    assert store.head() == seq
    assert store.get("acme", "shop", "c") is None


def test_seed_never_writes_over_a_catalog_that_exists(store: SqlCatalogStore) -> None:
    store.upsert("acme", "shop", [item("a", "mine")])
    head = store.head()
    assert store.seed("acme", "shop", [item("a", "theirs")], {}) is None
    assert store.head() == head
    got = store.get("acme", "shop", "a")
    assert got is not None
    assert got.text == {"title": "mine"}
    # Another tenant's catalog of that name is another catalog.
    assert store.seed("globex", "shop", [item("a", "theirs")], {}) is not None


def test_seed_refuses_bad_input(store: SqlCatalogStore) -> None:
    with pytest.raises(ValueError, match="at least one item"):
        store.seed("acme", "shop", [], {})
    with pytest.raises(ValueError, match="float32"):
        store.seed("acme", "shop", [item("a")], {"m/v1": {"a": b"abc"}})
    assert store.head() == 0


@pytest.mark.parametrize(
    "value",
    [10**400, 2**64, 2**53, -(2**53), float("nan"), float("inf")],
    ids=["10^400", "2^64", "2^53", "-2^53", "nan", "inf"],
)
def test_an_attribute_no_json_reader_holds_is_refused(store: SqlCatalogStore, value: float) -> None:
    with pytest.raises(ValueError, match=r"attributes\.n: "):
        store.upsert("tn_a", "c", [item("x", n=value)])
    with pytest.raises(ValueError, match=r"attributes\.n: "):
        store.seed("tn_a", "c", [item("x", n=value)], {})
    assert store.head() == 0
    assert store.get("tn_a", "c", "x") is None


def test_the_largest_safe_integers_are_stored_exactly(store: SqlCatalogStore) -> None:
    sent = item("x", top=2**53 - 1, bottom=-(2**53 - 1))
    store.upsert("tn_a", "c", [sent])
    assert same(store.get("tn_a", "c", "x"), sent)


def test_an_upsert_writes_its_items_vectors_in_its_transaction(store: SqlCatalogStore) -> None:
    vectors = {
        SPACE: {"x": vec(1, 2), "y": vec(3, 4), "gone": vec(5, 6)},
        OTHER_SPACE: {"x": vec(7)},
    }
    store.upsert("tn_a", "c", [item("x"), item("y")], vectors)
    assert store.get_vectors("tn_a", "c", SPACE, ["x", "y", "gone"]) == {
        "x": vec(1, 2),
        "y": vec(3, 4),
    }
    assert store.get_vectors("tn_a", "c", OTHER_SPACE, ["x", "y"]) == {"x": vec(7)}
    # The new text's vectors replace the item's; a space the upsert has none for has none.
    store.upsert("tn_a", "c", [item("x", "new")], {SPACE: {"x": vec(9, 9)}})
    assert store.get_vectors("tn_a", "c", SPACE, ["x", "y"]) == {"x": vec(9, 9), "y": vec(3, 4)}
    assert store.get_vectors("tn_a", "c", OTHER_SPACE, ["x"]) == {}
    head = store.head()
    with pytest.raises(ValueError, match="float32"):
        store.upsert("tn_a", "c", [item("z")], {SPACE: {"z": b"abc"}})
    assert store.head() == head
    assert store.get("tn_a", "c", "z") is None


def test_vectors_made_from_an_item_since_replaced_are_not_stored(store: SqlCatalogStore) -> None:
    embedded = {"x": item("x", "red shoe", n=1), "y": item("y"), "z": item("z", on=1)}
    store.upsert("tn_a", "c", list(embedded.values()))
    store.upsert("tn_a", "c", [item("x", "blue sock", n=1), item("z", on=True)])
    blobs = {"x": vec(1), "y": vec(2), "z": vec(3), "gone": vec(4)}
    assert store.put_vectors("tn_a", "c", SPACE, blobs, embedded) == ["y"]
    assert store.get_vectors("tn_a", "c", SPACE, list(blobs)) == {"y": vec(2)}
    current = {"x": item("x", "blue sock", n=1), "z": item("z", on=True)}
    assert store.put_vectors("tn_a", "c", SPACE, blobs, current) == ["x", "z"]
    assert store.put_vectors("tn_a", "c", OTHER_SPACE, blobs) == ["x", "y", "z"]


def test_an_item_is_the_same_body_only_with_its_text_fields_in_the_same_order() -> None:
    """Fields in another order embed as another text: a vector made from one must not
    stand for the other (the backfill's check against a newer upsert)."""
    from stores.catalog import item_text, same_body

    a = Item("x", {"title": "red", "body": "shoe"}, {"n": 1})
    b = Item("x", {"body": "shoe", "title": "red"}, {"n": 1})
    assert item_text(a) != item_text(b)
    assert not same_body(a, b)
    assert same_body(a, Item("x", {"title": "red", "body": "shoe"}, {"n": 1}))
    assert not same_body(a, Item("x", {"title": "red", "body": "shoe"}, {"n": True}))


def test_get_many_and_has_catalog(store: SqlCatalogStore) -> None:
    items = [Item(f"i{n}", {"title": f"t{n}"}, {"n": n}) for n in range(1200)]
    store.upsert("tn_a", "shop", items)
    store.upsert("tn_b", "shop", [Item("i1", {"title": "theirs"}, {})])
    wanted = ["i1", "i1199", "i1", "absent", *(f"i{n}" for n in range(600, 700))]
    found = store.get_many("tn_a", "shop", wanted)
    assert set(found) == {"i1", "i1199", *(f"i{n}" for n in range(600, 700))}
    assert found["i1"].text == {"title": "t1"}
    assert found["i1"].attributes == {"n": 1}
    assert store.get_many("tn_b", "shop", ["i1", "i2"])["i1"].text == {"title": "theirs"}
    assert store.get_many("tn_a", "other", ["i1"]) == {}
    assert store.get_many("tn_a", "shop", []) == {}
    assert store.has_catalog("tn_a", "shop")
    assert not store.has_catalog("tn_a", "shops")
    assert not store.has_catalog("tn_c", "shop")  # another tenant's name


def test_a_nul_in_an_id_is_refused_or_found_nowhere_on_both_backends(
    store: SqlCatalogStore,
) -> None:
    """PostgreSQL's text cannot hold NUL, SQLite's can: SQLite stored such an id and
    PostgreSQL failed the statement (a `DataError`, for reads too). Both refuse the
    writes now, naming the id, and find no such item."""
    store.upsert("tn_a", "c", [item("a")])
    for tenant_id, item_id in (("tn_a", "a\x00b"), ("tn\x00a", "a")):
        with pytest.raises(ValueError, match="NUL"):
            store.upsert(tenant_id, "c", [item(item_id)])
        with pytest.raises(ValueError, match="NUL"):
            store.delete(tenant_id, "c", item_id)
        with pytest.raises(ValueError, match="NUL"):
            store.put_vectors(tenant_id, "c", SPACE, {item_id: vec(1.0)})
        assert store.get(tenant_id, "c", item_id) is None
        assert set(store.get_many(tenant_id, "c", [item_id, "a"])) == (
            {"a"} if tenant_id == "tn_a" else set()
        )
        assert store.get_vectors(tenant_id, "c", SPACE, [item_id]) == {}
    assert not store.has_catalog("tn\x00a", "c")
    assert store.catalogs("tn\x00a") == []
    assert store.scan("tn\x00a", "c", None, 10) == []
    assert [i.id for i in store.scan("tn_a", "c", "\x00", 10)] == ["a"]
    assert store.head() == 1


@pytest.mark.parametrize(
    ("sent", "field"),
    [
        (Item("x", {"title": "shoe \ud800"}), "text.title"),
        (Item("x", {"title\udc00": "shoe"}), "text"),
        (Item("x", {"title": "shoe"}, {"size\ud800": 42}), "attributes"),
        (Item("x", {"title": "shoe"}, {"size": "4\udc002"}), "attributes.size"),
    ],
)
def test_text_no_utf8_writer_writes_is_refused_on_both_backends(
    store: SqlCatalogStore, sent: Item, field: str
) -> None:
    """A lone surrogate (JSON's `\\ud800`) in a text field or a name was stored by both
    backends (escaped in the JSON), and every answer holding the item then failed."""
    with pytest.raises(ValueError, match=rf"^{field}: "):
        store.upsert("tn_a", "c", [item("ok"), sent])
    with pytest.raises(ValueError, match=rf"^{field}: "):
        store.seed("tn_a", "c", [sent], {})
    assert store.head() == 0
    assert store.get("tn_a", "c", "ok") is None


def test_an_item_problem_never_repeats_a_name_no_utf8_writer_writes() -> None:
    """`item_problem` (items from a snapshot or a JSON-lines file) named the text field
    whose name held a lone surrogate: a problem that no log line could write."""
    assert item_problem(Item("x", {"t\ud800": "a"})) == f"text: names are {NOT_UNICODE}"
    assert item_problem(Item("x", {"t": "a\ud800"})) == f"text.t: {NOT_UNICODE}"
