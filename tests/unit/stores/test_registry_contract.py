"""The `Registry` contract: the same tests on SQLite (a file in tmp_path) and on a real
PostgreSQL server."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from stores.registry_sql import VERSION_TABLE, SqlRegistry, metadata, open_registry
from stores.tenants import (
    ApiKey,
    RateLimits,
    Registry,
    TooManyKeys,
    UsageRow,
    hash_key,
    new_id,
    new_key,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SECRET = b"test-secret"


@pytest.fixture
def registry(url: str) -> Iterator[SqlRegistry]:
    """A migrated registry on `url`."""
    reg = open_registry(url)
    yield reg
    reg.close()


def make_key(tenant_id: str, created_at: datetime = T0, limits: RateLimits | None = None) -> ApiKey:
    """A new key of `tenant_id` (its secret is not kept: only the hash is stored)."""
    key, prefix = new_key()
    return ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        prefix=prefix,
        key_hash=hash_key(SECRET, key),
        name="ci",
        scopes=frozenset({"embed", "search"}),
        models=frozenset({"minilm"}),
        may_pin=True,
        created_at=created_at,
        limits=limits or RateLimits(),
    )


def test_sql_registry_is_a_registry(registry: SqlRegistry) -> None:
    reg: Registry = registry  # checked by mypy
    assert reg.generation() == 0


def test_create_get_and_list_tenants(registry: SqlRegistry) -> None:
    limits = RateLimits(requests_per_s=5.5, texts_per_s=100.0, monthly_texts=10**10)
    a = registry.create_tenant("Acme", limits, tenant_id="tn_acme")
    b = registry.create_tenant("Globex", RateLimits())
    assert a.id == "tn_acme"
    assert b.id.startswith("tn_")
    assert registry.get_tenant("tn_acme") == a
    assert registry.get_tenant(b.id) == b
    assert registry.get_tenant("tn_nobody") is None
    assert registry.list_tenants() == sorted([a, b], key=lambda t: (t.created_at, t.id))


def test_duplicate_tenant_id_is_refused(registry: SqlRegistry) -> None:
    registry.create_tenant("Acme", RateLimits(), tenant_id="tn_acme")
    generation = registry.generation()
    with pytest.raises(ValueError, match="tn_acme"):
        registry.create_tenant("Other", RateLimits(), tenant_id="tn_acme")
    assert registry.get_tenant("tn_acme").name == "Acme"  # type: ignore[union-attr]
    assert registry.generation() == generation


def test_update_tenant(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits(requests_per_s=1.0))
    disabled = registry.update_tenant(t.id, disabled=True)
    assert disabled is not None
    assert disabled.disabled
    assert disabled.limits == RateLimits(requests_per_s=1.0)
    relimited = registry.update_tenant(t.id, limits=RateLimits(monthly_texts=7))
    assert relimited == registry.get_tenant(t.id)
    assert relimited is not None
    assert relimited.disabled
    assert relimited.limits == RateLimits(monthly_texts=7)
    assert registry.update_tenant("tn_nobody", disabled=True) is None


def test_a_change_of_some_limits_keeps_the_others(registry: SqlRegistry) -> None:
    """`limit_fields` names the limits that change: raising a rate keeps the monthly
    quota; a named limit set to None is removed; none named changes nothing."""
    t = registry.create_tenant("Acme", RateLimits(5.0, 100.0, 10_000))
    faster = registry.update_tenant(t.id, RateLimits(requests_per_s=50.0), None, ["requests_per_s"])
    assert faster is not None
    assert faster.limits == RateLimits(50.0, 100.0, 10_000)
    unmetered = registry.update_tenant(t.id, RateLimits(), None, ["monthly_texts"])
    assert unmetered is not None
    assert unmetered.limits == RateLimits(50.0, 100.0, None)
    assert registry.update_tenant(t.id, RateLimits(1.0, 1.0, 1), True, []) == replace(
        unmetered, disabled=True
    )
    assert registry.get_tenant(t.id) == replace(unmetered, disabled=True)
    with pytest.raises(ValueError, match="burst"):
        registry.update_tenant(t.id, RateLimits(), None, ["burst"])


def test_ids_holding_nul_name_nothing(registry: SqlRegistry) -> None:
    """PostgreSQL refuses text with NUL: an id from a request's path holding one is
    simply unknown (None, empty), on both databases, and nothing is written."""
    t = registry.create_tenant("Acme", RateLimits())
    key = make_key(t.id)
    registry.add_key(key)
    registry.add_usage([UsageRow(t.id, "minilm", date(2026, 5, 1), 1, 1, 0)])
    generation = registry.generation()
    bad_tenant, bad_key = t.id + "\x00", key.id + "\x00"
    assert registry.get_tenant(bad_tenant) is None
    assert registry.update_tenant(bad_tenant, disabled=True) is None
    assert registry.list_keys(bad_tenant) == []
    assert registry.usage(bad_tenant, date(2026, 5, 1), date(2026, 5, 1)) == []
    for tenant_id, key_id in ((t.id, bad_key), (bad_tenant, key.id)):
        assert registry.get_key(tenant_id, key_id) is None
        assert registry.revoke_key(tenant_id, key_id, T0) is None
        assert registry.expire_key(tenant_id, key_id, T0) is None
        assert registry.rotate_out(tenant_id, key_id, T0, T0) is None
    with pytest.raises(KeyError):
        registry.add_key(make_key(bad_tenant))
    with pytest.raises(ValueError, match="NUL"):
        registry.create_tenant("Nul", RateLimits(), "tn\x00nul")
    assert registry.generation() == generation
    assert registry.get_key(t.id, key.id) == key


def test_what_postgresql_alone_would_refuse_is_refused_on_both(registry: SqlRegistry) -> None:
    """A NUL in a name, an id over 64 characters, a NaN limit: PostgreSQL raised its own
    error (not the ValueError of the interface) and SQLite stored them (a NaN read
    back as no limit at all)."""
    generation = registry.generation()
    with pytest.raises(ValueError, match="NUL"):
        registry.create_tenant("A\x00", RateLimits())
    with pytest.raises(ValueError, match="64"):
        registry.create_tenant("A", RateLimits(), "t" * 65)
    with pytest.raises(ValueError, match="finite"):
        registry.create_tenant("A", RateLimits(requests_per_s=float("nan")))
    t = registry.create_tenant("A", RateLimits(), "t" * 64)
    with pytest.raises(ValueError, match="finite"):
        registry.update_tenant(t.id, RateLimits(texts_per_s=float("inf")))
    with pytest.raises(ValueError, match="NUL"):
        registry.add_key(replace(make_key(t.id), name="ci\x00"))
    with pytest.raises(ValueError, match="finite"):
        registry.add_key(make_key(t.id, limits=RateLimits(requests_per_s=float("nan"))))
    assert registry.generation() == generation + 1  # the one tenant made
    assert registry.list_keys(t.id) == []


def test_a_failed_write_names_no_stored_values(registry: SqlRegistry) -> None:
    """The database's error (which the service logs with its traceback when a write
    fails) carries the statement, never the bound values: no key hash, no name."""
    t = registry.create_tenant("Acme", RateLimits())
    key = replace(make_key(t.id), name="name-that-must-not-show")
    registry.add_key(key)
    with pytest.raises(ValueError, match="already exists") as caught:
        registry.add_key(replace(key, id=new_id("key")))  # the same hash
    logged = "".join(traceback.format_exception(caught.value))
    assert key.key_hash not in logged  # PostgreSQL's own message quotes the duplicate
    assert key.name not in logged
    database_error = caught.value.__context__
    assert database_error is not None
    assert key.name not in str(database_error)  # SQLAlchemy's parameters are hidden


def test_keys_add_get_list(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    first = make_key(t.id, T0, RateLimits(texts_per_s=3.0))
    second = replace(make_key(t.id, T0 + timedelta(seconds=1)), models=None)
    registry.add_key(second)
    registry.add_key(first)
    assert registry.get_key(t.id, first.id) == first
    assert registry.get_key(t.id, second.id) == second
    assert registry.get_key(t.id, "key_nobody") is None
    assert registry.list_keys(t.id) == [first, second]


def test_key_for_unknown_tenant_is_refused(registry: SqlRegistry) -> None:
    with pytest.raises(KeyError):
        registry.add_key(make_key("tn_nobody"))
    assert registry.generation() == 0


def test_duplicate_key_is_refused(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    key = make_key(t.id)
    registry.add_key(key)
    with pytest.raises(ValueError, match=key.id):
        registry.add_key(key)


def test_another_tenants_key_is_invisible(registry: SqlRegistry) -> None:
    mine = registry.create_tenant("Acme", RateLimits())
    theirs = registry.create_tenant("Globex", RateLimits())
    key = make_key(theirs.id)
    registry.add_key(key)
    generation = registry.generation()
    assert registry.get_key(mine.id, key.id) is None
    assert registry.revoke_key(mine.id, key.id, T0) is None
    assert registry.expire_key(mine.id, key.id, T0) is None
    assert registry.list_keys(mine.id) == []
    assert registry.get_key(theirs.id, key.id) == key  # untouched
    assert registry.generation() == generation


def test_revoke_keeps_the_earlier_time(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    key = make_key(t.id)
    registry.add_key(key)
    revoked = registry.revoke_key(t.id, key.id, T0 + timedelta(hours=2))
    assert revoked is not None
    assert revoked.revoked_at == T0 + timedelta(hours=2)
    later = registry.revoke_key(t.id, key.id, T0 + timedelta(hours=5))
    assert later is not None
    assert later.revoked_at == T0 + timedelta(hours=2)
    earlier = registry.revoke_key(t.id, key.id, T0 + timedelta(hours=1))
    assert earlier is not None
    assert earlier.revoked_at == T0 + timedelta(hours=1)
    assert not earlier.live(T0 + timedelta(hours=1))
    assert earlier.live(T0)
    assert registry.get_key(t.id, key.id) == earlier


def test_expire_keeps_the_earlier_time(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    key = make_key(t.id)
    registry.add_key(key)
    expired = registry.expire_key(t.id, key.id, T0 + timedelta(days=30))
    assert expired is not None
    assert expired.expires_at == T0 + timedelta(days=30)
    assert expired.revoked_at is None
    later = registry.expire_key(t.id, key.id, T0 + timedelta(days=60))
    assert later is not None
    assert later.expires_at == T0 + timedelta(days=30)
    sooner = registry.expire_key(t.id, key.id, T0 + timedelta(days=1))
    assert sooner is not None
    assert sooner.expires_at == T0 + timedelta(days=1)
    assert registry.list_keys(t.id) == [sooner]


def test_a_key_is_rotated_out_once_keeping_the_earlier_end(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    other = registry.create_tenant("Globex", RateLimits())
    key = make_key(t.id)
    registry.add_key(key)
    registry.expire_key(t.id, key.id, T0 + timedelta(days=30))
    assert registry.rotate_out(other.id, key.id, T0 + timedelta(days=1), T0) is None
    out = registry.rotate_out(t.id, key.id, T0 + timedelta(days=60), T0, "key_next")
    assert out is not None
    assert (out.rotated_at, out.expires_at) == (T0, T0 + timedelta(days=30))
    assert out.replaced_by == "key_next"
    assert registry.rotate_out(t.id, key.id, T0 + timedelta(days=1), T0) is None  # once
    assert registry.get_key(t.id, key.id) == out
    assert registry.snapshot().keys[0].rotated_at == T0
    assert registry.list_keys(t.id)[0].replaced_by == "key_next"


def test_a_revoked_key_is_not_rotated_out(registry: SqlRegistry) -> None:
    """A revocation that came first stands: the rotation that read the key live before
    it loses, and takes back the replacement it issued."""
    t = registry.create_tenant("Acme", RateLimits())
    key = make_key(t.id)
    registry.add_key(key)
    registry.revoke_key(t.id, key.id, T0)
    assert registry.rotate_out(t.id, key.id, T0 + timedelta(hours=1), T0) is None
    stored = registry.get_key(t.id, key.id)
    assert stored is not None
    assert (stored.revoked_at, stored.rotated_at, stored.expires_at) == (T0, None, None)


def test_concurrent_rotations_of_one_key_claim_it_once(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    key = make_key(t.id)
    registry.add_key(key)
    won: list[bool] = []

    def rotate() -> None:
        won.append(registry.rotate_out(t.id, key.id, T0 + timedelta(hours=1), T0) is not None)

    threads = [threading.Thread(target=rotate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 5 + [True]


def test_generation_bumps_on_every_write_and_not_on_reads(registry: SqlRegistry) -> None:
    seen = [registry.generation()]

    def changed() -> bool:
        seen.append(registry.generation())
        return seen[-1] != seen[-2]

    t = registry.create_tenant("Acme", RateLimits())
    assert changed()
    registry.update_tenant(t.id, disabled=True)
    assert changed()
    key = make_key(t.id)
    registry.add_key(key)
    assert changed()
    registry.revoke_key(t.id, key.id, T0)
    assert changed()
    registry.expire_key(t.id, key.id, T0)
    assert changed()
    registry.get_tenant(t.id)
    registry.list_tenants()
    registry.get_key(t.id, key.id)
    registry.list_keys(t.id)
    registry.snapshot()
    registry.usage(t.id, date(2026, 1, 1), date(2026, 12, 31))
    registry.add_usage([UsageRow(t.id, "minilm", date(2026, 5, 1), 1, 1, 0)])
    registry.update_tenant("tn_nobody", disabled=True)
    assert not changed()
    assert len(set(seen)) == 6


def test_snapshot_is_consistent(registry: SqlRegistry) -> None:
    a = registry.create_tenant("Acme", RateLimits(requests_per_s=2.0))
    b = registry.create_tenant("Globex", RateLimits())
    keys = [make_key(a.id, T0), make_key(b.id, T0 + timedelta(seconds=1))]
    for key in keys:
        registry.add_key(key)
    snap = registry.snapshot()
    assert snap.generation == registry.generation()
    assert snap.tenants == {a.id: a, b.id: b}
    assert snap.keys == keys


def test_a_snapshot_at_a_time_leaves_out_the_keys_dead_by_then(registry: SqlRegistry) -> None:
    """What replicas keep: revoked or expired keys stay so, and are not loaded."""
    t = registry.create_tenant("Acme", RateLimits())
    live, revoked, expired, leaving = (make_key(t.id, T0 + timedelta(seconds=n)) for n in range(4))
    for key in (live, revoked, expired, leaving):
        registry.add_key(key)
    registry.revoke_key(t.id, revoked.id, T0 + timedelta(hours=1))
    registry.expire_key(t.id, expired.id, T0 + timedelta(hours=1))
    registry.revoke_key(t.id, leaving.id, T0 + timedelta(hours=3))  # a rotation's overlap
    at = T0 + timedelta(hours=2)
    assert [k.id for k in registry.snapshot(at).keys] == [live.id, leaving.id]
    assert len(registry.snapshot().keys) == 4  # all of them without a time
    assert registry.snapshot(at).generation == registry.generation()


def test_a_tenant_holds_at_most_max_live_keys(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    other = registry.create_tenant("Globex", RateLimits())
    first, second = make_key(t.id, T0), make_key(t.id, T0 + timedelta(seconds=1))
    registry.add_key(first, max_live=2)
    registry.add_key(second, max_live=2)
    registry.add_key(make_key(other.id, T0 + timedelta(seconds=2)), max_live=2)  # its own
    third = make_key(t.id, T0 + timedelta(seconds=3))
    generation = registry.generation()
    with pytest.raises(TooManyKeys, match="2 live keys"):
        registry.add_key(third, max_live=2)
    assert registry.generation() == generation  # nothing written
    registry.add_key(third)  # without a bound (a rotation's replacement)
    registry.revoke_key(t.id, first.id, T0 + timedelta(seconds=4))
    registry.expire_key(t.id, second.id, T0 + timedelta(seconds=4))
    registry.add_key(make_key(t.id, T0 + timedelta(seconds=5)), max_live=2)  # one live: room
    with pytest.raises(TooManyKeys):
        registry.add_key(make_key(t.id, T0 + timedelta(seconds=6)), max_live=2)


def test_snapshot_matches_its_generation_under_concurrent_writes(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    base = registry.generation()
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            registry.add_key(make_key(t.id))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(20):
            snap = registry.snapshot()
            # Every write since `base` added exactly one key.
            assert len(snap.keys) == snap.generation - base
    finally:
        stop.set()
        writer.join()


def test_usage_adds_up(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    day = date(2026, 5, 1)
    registry.add_usage(
        [
            UsageRow(t.id, "minilm", day, requests=1, texts=10, errors=0),
            UsageRow(t.id, "minilm", day, requests=2, texts=5, errors=1),
            UsageRow(t.id, "ranker", day, requests=1, texts=1, errors=0),
        ]
    )
    registry.add_usage([UsageRow(t.id, "minilm", day, requests=4, texts=4, errors=4)])
    registry.add_usage([])
    assert registry.usage(t.id, day, day) == [
        UsageRow(t.id, "minilm", day, requests=7, texts=19, errors=5),
        UsageRow(t.id, "ranker", day, requests=1, texts=1, errors=0),
    ]


def test_concurrent_usage_writes_in_any_order_all_count_and_none_fails(
    registry: SqlRegistry,
) -> None:
    """Replicas flush their counts at once, each batch in the order it first counted
    its rows: on PostgreSQL two batches that share rows in opposite orders deadlocked,
    and one flush in five failed (kept for the next, a second later, with a warning)."""
    day = date(2026, 5, 1)
    models = [f"m{i:02d}" for i in range(20)]
    errors: list[str] = []
    per_thread = 40

    def flush(backwards: bool) -> None:
        order = models[::-1] if backwards else models
        for _ in range(per_thread):
            try:
                registry.add_usage([UsageRow("acme", m, day, 1, 2, 0) for m in order])
            except Exception:
                errors.append(traceback.format_exc(limit=1))

    threads = [threading.Thread(target=flush, args=(n % 2 == 1,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = registry.usage("acme", day, day)
    assert [(r.model, r.requests, r.texts) for r in rows] == [
        (m, 4 * per_thread, 8 * per_thread) for m in models
    ]


def test_usage_by_day_range_and_tenant(registry: SqlRegistry) -> None:
    a = registry.create_tenant("Acme", RateLimits())
    b = registry.create_tenant("Globex", RateLimits())
    days = [date(2026, 4, 30), date(2026, 5, 1), date(2026, 5, 2), date(2026, 5, 3)]
    rows = [UsageRow(a.id, m, d, 1, 2, 0) for d in reversed(days) for m in ("z", "a")]
    registry.add_usage([*rows, UsageRow(b.id, "a", days[1], 9, 9, 9)])
    got = registry.usage(a.id, days[1], days[2])
    assert [(r.day, r.model) for r in got] == [
        (days[1], "a"),
        (days[1], "z"),
        (days[2], "a"),
        (days[2], "z"),
    ]
    assert all(r.tenant_id == a.id and r.requests == 1 for r in got)
    assert registry.usage(b.id, days[0], days[0]) == []


def test_a_days_usage_is_in_byte_order_of_model_names(registry: SqlRegistry) -> None:
    """As SQLite compares, whatever the PostgreSQL database's locale would say."""
    from sqlalchemy import text

    t = registry.create_tenant("Acme", RateLimits())
    day = date(2026, 5, 1)
    registry.add_usage(
        [UsageRow(t.id, m, day, 1, 1, 0) for m in ("a", "minilm_l12", "B", "minilm-l6")]
    )
    assert [r.model for r in registry.usage(t.id, day, day)] == [
        "B",
        "a",
        "minilm-l6",
        "minilm_l12",
    ]
    if registry.url.get_backend_name() == "postgresql":
        with registry._engine.connect() as conn:
            collations = conn.execute(
                text(
                    "SELECT column_name, collation_name FROM information_schema.columns "
                    "WHERE table_name = 'usage' AND column_name IN ('tenant_id', 'model')"
                )
            ).all()
        assert sorted(collations) == [("model", "C"), ("tenant_id", "C")]


def test_migrate_twice_is_a_no_op(url: str) -> None:
    first = open_registry(url)
    try:
        t = first.create_tenant("Acme", RateLimits())
        first.migrate()
        again = open_registry(url)
        try:
            assert again.get_tenant(t.id) == t
            assert again.generation() == first.generation() == 1
        finally:
            again.close()
    finally:
        first.close()


def test_concurrent_migrations(url: str) -> None:
    registries = [SqlRegistry(url) for _ in range(3)]
    errors: list[BaseException] = []

    def migrate(reg: SqlRegistry) -> None:
        try:
            reg.migrate()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=migrate, args=(reg,)) for reg in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert [reg.generation() for reg in registries] == [0, 0, 0]
    finally:
        for reg in registries:
            reg.close()


def test_two_registries_share_one_database(url: str) -> None:
    one, two = open_registry(url), open_registry(url)
    try:
        t = one.create_tenant("Acme", RateLimits())
        assert two.get_tenant(t.id) == t
        key = make_key(t.id)
        two.add_key(key)
        assert one.get_key(t.id, key.id) == key
        assert one.generation() == two.generation() == 2
        one.add_usage([UsageRow(t.id, "minilm", date(2026, 5, 1), 1, 1, 0)])
        two.add_usage([UsageRow(t.id, "minilm", date(2026, 5, 1), 1, 1, 0)])
        assert two.usage(t.id, date(2026, 5, 1), date(2026, 5, 1))[0].requests == 2
    finally:
        one.close()
        two.close()


@pytest.fixture
def far_east_registry(url: str) -> Iterator[SqlRegistry]:
    """A registry whose PostgreSQL sessions are not in UTC (timestamptz comes back in the
    session's zone)."""
    if url.startswith("postgresql"):
        url += "?options=-c%20timezone%3DAsia%2FKolkata"
    reg = open_registry(url)
    yield reg
    reg.close()


def test_timestamps_come_back_aware_utc(far_east_registry: SqlRegistry) -> None:
    registry = far_east_registry
    if registry.url.get_backend_name() == "postgresql":
        with registry._engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW timezone").scalar() == "Asia/Kolkata"
    t = registry.create_tenant("Acme", RateLimits())
    plus_two = timezone(timedelta(hours=2))
    key = replace(
        make_key(t.id),
        created_at=datetime(2026, 5, 1, 14, 0, tzinfo=plus_two),
        expires_at=datetime(2026, 6, 1, 14, 0, tzinfo=plus_two),
    )
    registry.add_key(key)
    registry.revoke_key(t.id, key.id, datetime(2026, 5, 20, 1, 30, tzinfo=plus_two))
    got = registry.get_key(t.id, key.id)
    tenant = registry.get_tenant(t.id)
    assert got is not None
    assert tenant is not None
    stamps = [tenant.created_at, got.created_at, got.expires_at, got.revoked_at]
    for stamp in stamps:
        assert stamp is not None
        assert stamp.tzinfo == UTC
    assert stamps[1:] == [
        datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 5, 19, 23, 30, tzinfo=UTC),
    ]
    assert abs(tenant.created_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_naive_timestamps_are_refused(registry: SqlRegistry) -> None:
    t = registry.create_tenant("Acme", RateLimits())
    key = make_key(t.id)
    registry.add_key(key)
    with pytest.raises(Exception, match="naive datetime"):
        registry.revoke_key(t.id, key.id, datetime(2026, 5, 1, 12, 0))
    assert registry.get_key(t.id, key.id) == key


def test_migrations_match_the_tables_the_code_uses(registry: SqlRegistry) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def ours(name: str | None, type_: str, _parent: object) -> bool:
        # The database's history also holds the catalogs (the catalog contract's to compare).
        return type_ != "table" or name in metadata.tables

    with registry._engine.connect() as conn:
        opts = {"version_table": VERSION_TABLE, "include_name": ours}
        context = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(context, metadata) == []


def test_keys_issued_before_the_catalog_scope_keep_writing_catalogs(url: str) -> None:
    """Migration 0010: catalog writes got a scope of their own (`catalog`); every key
    that held `search` (which covered them) is given it, and no other key is."""
    from alembic import command
    from alembic.config import Config

    from stores.registry_sql import MIGRATIONS_DIR, writing

    reg = SqlRegistry(url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with writing(reg._engine) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0009")
        tenant = reg.create_tenant("Acme", RateLimits())
        searcher = make_key(tenant.id)  # embed, search
        embedder = replace(make_key(tenant.id), scopes=frozenset({"embed"}))
        for key in (searcher, embedder):
            reg.add_key(key)
        reg.migrate()
        assert reg.get_key(tenant.id, searcher.id).scopes == {"embed", "search", "catalog"}  # type: ignore[union-attr]
        assert reg.get_key(tenant.id, embedder.id).scopes == {"embed"}  # type: ignore[union-attr]
        reg.migrate()  # again: nothing changes
        assert reg.get_key(tenant.id, searcher.id).scopes == {"embed", "search", "catalog"}  # type: ignore[union-attr]
    finally:
        reg.close()
