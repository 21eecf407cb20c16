"""The `OnlineStore` contract: the same cases on the embedded SQLite store (a file in
tmp_path) and on Redis (a real redis-server the fixtures start), with real short waits
for freshness. Then what only one backend promises (SQLite: shared by processes; Redis:
one round trip, down means unavailable)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from stores.features import (
    AT_FIELD,
    FeatureStoreUnavailable,
    Merge,
    OnlineStore,
    Row,
    RowKey,
    apply_merge,
    pushed,
    times_field,
)
from stores.features_redis import RedisFeatureStore
from stores.features_sqlite import SqliteFeatureStore
from tests.redis_server import RedisServer

Body = Callable[[OnlineStore], Awaitable[None]]
DAY = 86400.0


def run(make: Callable[[], OnlineStore], body: Body) -> None:
    async def main() -> None:
        store = make()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def key(entity: str = "u1", tenant: str = "tn_a", view: str = "user_activity") -> RowKey:
    return RowKey(tenant, view, entity)


def merge(entity: str = "u1", tenant: str = "tn_a", at: float | None = None, **kw: object) -> Merge:
    return Merge(key(entity, tenant), time.time() if at is None else at, DAY, **kw)  # type: ignore[arg-type]


def test_a_missing_row_reads_none_and_reads_keep_order(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    async def body(store: OnlineStore) -> None:
        assert await store.read([]) == []
        assert await store.read([key("nobody")]) == [None]
        await store.merge([merge("u2", add={"clicks": 1})])
        got = await store.read([key("nobody"), key("u2")])
        assert got[0] is None
        assert got[1] is not None
        assert got[1]["clicks"] == 1

    run(make_feature_store, body)


def test_merges_add_keep_highs_and_lows_and_push_lists(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    async def body(store: OnlineStore) -> None:
        now = time.time()
        await store.merge(
            [merge(at=now - 10, add={"clicks": 1, "aff:shoes": 2.5}, high={"last": now - 10},
                   low={"first": now - 10},
                   push={"recent": ([("i1", now - 10), ("i2", now - 10)], 3)})]
        )  # fmt: skip
        await store.merge(
            [merge(at=now - 5, add={"clicks": 2, "aff:shoes": 1, "aff:hats": 0.5},
                   high={"last": now - 5}, low={"first": now - 5},
                   push={"recent": ([("i3", now - 5), ("i1", now - 5)], 3)})]
        )  # fmt: skip
        (row,) = await store.read([key()])
        assert row == {
            "clicks": 3,
            "aff:shoes": 3.5,
            "aff:hats": 0.5,
            "last": pytest.approx(now - 5),
            "first": pytest.approx(now - 10),
            "recent": ["i3", "i1", "i2"],
            times_field("recent"): [repr(now - 5), repr(now - 5), repr(now - 10)],
            AT_FIELD: pytest.approx(now - 5),  # the newest event counted
        }
        await store.merge([merge(push={"recent": ([], 3)})])
        (row,) = await store.read([key()])
        assert row is not None
        assert row["recent"] == ["i3", "i1", "i2"]

    run(make_feature_store, body)


def test_a_late_event_takes_its_place_by_time_not_the_front(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    """Events may arrive dated in the past: the list keeps the newest by event time."""
    now = time.time()

    def view(item: str, at: float) -> Merge:
        return Merge(key(), at, 30 * DAY, add={"views": 1}, push={"recent": ([(item, at)], 20)})

    async def body(store: OnlineStore) -> None:
        for n in range(20):  # the last 30 minutes
            await store.merge([view(f"new{n}", now - 1800 + 90 * n)])
        await store.merge([view("old", now - 10 * DAY)])
        await store.merge([view("new3", now - 10 * DAY)])  # seen since: keeps its newest time
        (row,) = await store.read([key()])
        assert row is not None
        assert row["recent"] == [f"new{n}" for n in reversed(range(20))]
        assert row["views"] == 22
        assert row[AT_FIELD] == pytest.approx(now - 1800 + 90 * 19)
        # one older than the newest but newer than the oldest kept goes between them
        await store.merge([view("mid", now - 1800 + 90 * 9.5)])
        (row,) = await store.read([key()])
        assert row is not None
        assert row["recent"][9:12] == ["new10", "mid", "new9"]
        assert row["recent"][-1] == "new1"  # new0, the oldest, made room

    run(make_feature_store, body)


def test_a_list_stored_without_times_still_reads_and_merges(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    """A row from before the items' times were kept: it reads as it was; its items count
    as of the row's newest event when the next merge orders them."""
    now = time.time()

    async def body(store: OnlineStore) -> None:
        await store.replace([(key(), {"recent": ["b", "a"], AT_FIELD: now - 60}, DAY)])
        assert await store.read([key()]) == [{"recent": ["b", "a"], AT_FIELD: now - 60}]
        await store.merge([merge(at=now, push={"recent": ([("c", now)], 4)})])
        await store.merge([merge(at=now - 3600, push={"recent": ([("z", now - 3600)], 4)})])
        await store.merge([merge(at=now - 60, push={"recent": ([("a", now - 60)], 4)})])
        (row,) = await store.read([key()])
        assert row == {
            "recent": ["c", "a", "b", "z"],
            times_field("recent"): [repr(now), repr(now - 60), repr(now - 60),
                                    repr(now - 3600)],
            AT_FIELD: now,
        }  # fmt: skip

    run(make_feature_store, body)


def test_sums_read_back_alike_on_both_backends(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    """Both add in double (Redis had added in long double): the rows agree to the bit,
    and so do the feature values."""
    from configs.features import load_definitions
    from deployments.pipelines.features import values

    view = load_definitions().feature_views["user_activity"]

    async def body(store: OnlineStore) -> None:
        for _ in range(3):
            await store.merge([merge(add={"spend": 89.9, "purchases": 1})])
        (row,) = await store.read([key()])
        assert row is not None
        assert row["spend"] == 89.9 + 89.9 + 89.9  # 269.70000000000005
        got = values(view, row)
        assert (got["spend"], got["purchases"]) == (269.7, 3)
        assert type(got["purchases"]) is int

    run(make_feature_store, body)


def test_what_memory_holds_agrees_with_the_reference_merge(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    now = time.time()
    merges = [
        merge(at=now - n, add={"n": n, "s:a b": 0.25}, high={"h": n}, low={"l": -n},
              push={"r": ([(f"i{n % 4}", now - n), ("x/y", now - n), ("ü", now - 2 * n)], 4)})
        for n in range(6)
    ]  # fmt: skip
    expected: Row | None = None
    for m in merges:
        expected = apply_merge(expected, m)

    async def body(store: OnlineStore) -> None:
        for m in merges:
            await store.merge([m])
        assert await store.read([key()]) == [expected]

    run(make_feature_store, body)


def test_a_field_whose_kind_changed_merges_as_the_reference_does(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    """A definitions file that turns a list feature into a number (or back) finds the
    other kind stored: the reference reads it as 0 or as no items; Redis's script had
    failed half way through the batch, which a repeat then applied twice."""
    now = time.time()
    merges = [
        merge(at=now - 3, push={"x": ([("a", now - 3)], 4)}, add={"n": 2}),
        merge(at=now - 2, add={"x": 1}, high={"n": -1.0}, low={"n": 5.0}),
        merge(at=now - 1, push={"n": ([("b", now - 1)], 4)}, add={"x": 0.5}),
        merge("u2", at=now, add={"c": 1}),
    ]
    expected: dict[str, Row | None] = {"u1": None, "u2": None}
    for m in merges:
        expected[m.key.entity] = apply_merge(expected[m.key.entity], m)

    async def body(store: OnlineStore) -> None:
        await store.merge(merges[:1])
        await store.merge(merges[1:])  # one batch: all of it applies
        assert await store.read([key(), key("u2")]) == [expected["u1"], expected["u2"]]

    run(make_feature_store, body)


def test_a_sum_past_the_largest_double_stays_there_on_both(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    """SQLite stored the infinity as null and started again from nothing; Redis refused
    the addition (a script error) or, in long double, went on past it."""
    biggest = sys.float_info.max

    async def body(store: OnlineStore) -> None:
        for _ in range(3):
            await store.merge([merge(add={"spend": 1e308, "fall": -1e308})])
        (row,) = await store.read([key()])
        assert row is not None
        assert (row["spend"], row["fall"]) == (biggest, -biggest)
        await store.merge([merge(add={"spend": -1e308})])
        (row,) = await store.read([key()])
        assert row is not None
        assert row["spend"] == biggest - 1e308

    run(make_feature_store, body)


def test_concurrent_merges_lose_no_update(make_feature_store: Callable[[], OnlineStore]) -> None:
    async def body(store: OnlineStore) -> None:
        others = [make_feature_store() for _ in range(3)]
        try:
            writes = [
                s.merge([merge(add={"events": 1}, push={"r": ([(f"i{n}", time.time())], 50)})])
                for n in range(10)
                for s in [store, *others]
            ]
            await asyncio.gather(*writes)
        finally:
            for s in others:
                await s.close()
        (row,) = await store.read([key()])
        assert row is not None
        assert row["events"] == 40
        assert sorted(row["r"]) == sorted(f"i{n}" for n in range(10))  # type: ignore[arg-type]

    run(make_feature_store, body)


def test_tenants_and_views_never_share_a_row(make_feature_store: Callable[[], OnlineStore]) -> None:
    async def body(store: OnlineStore) -> None:
        await store.merge([merge(tenant="tn_a", add={"clicks": 5})])
        await store.merge([merge(tenant="tn_b", add={"clicks": 1})])
        a, b, other_view = await store.read(
            [key(tenant="tn_a"), key(tenant="tn_b"), RowKey("tn_a", "item_popularity", "u1")]
        )
        assert a is not None
        assert b is not None
        assert (a["clicks"], b["clicks"], other_view) == (5, 1, None)
        # Ids with the separators of either backend's keys stay apart.
        await store.merge([merge(entity="x:y", tenant="t}n", add={"clicks": 7})])
        assert await store.read([key(entity="x", tenant="t}n")]) == [None]
        (row,) = await store.read([key(entity="x:y", tenant="t}n")])
        assert row is not None
        assert row["clicks"] == 7

    run(make_feature_store, body)


def test_a_read_of_many_rows_answers_each_key_in_order(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    """A recommendation's read: hundreds of keys at once (more than one statement's
    worth), repeated and missing ones, ids that need quoting, two tenants and views."""
    odd = ['q"uote', "back\\slash", "ctl\x01\n", "ünï😀", "{json}:,"]
    ids = [f"sku-{n}" for n in range(1200)] + odd

    async def body(store: OnlineStore) -> None:
        now = time.time()
        rows = [(key(i, view="item_popularity"), {"views": n, AT_FIELD: now}, DAY)
                for n, i in enumerate(ids) if n % 3]  # fmt: skip
        rows.append((key("sku-1", "tn_b", "item_popularity"), {"views": -1, AT_FIELD: now}, DAY))
        rows.append((key("sku-2", view="item_popularity"), {"views": 2, AT_FIELD: now - DAY}, DAY))
        await store.replace(rows)
        wanted = [*ids, "sku-4", "sku-1", "nobody"]
        keys = [key(i, view="item_popularity") for i in wanted]
        keys.append(key("sku-1", "tn_b", "item_popularity"))
        keys.append(key("sku-1"))  # another view
        got = await store.read(keys)
        expected: list[object] = []
        for i in wanted:
            n = ids.index(i) if i in ids else 0
            fresh = i in ids and n % 3 and i != "sku-2"
            expected.append({"views": n, AT_FIELD: pytest.approx(now)} if fresh else None)
        expected += [{"views": -1, AT_FIELD: pytest.approx(now)}, None]
        assert got == expected
        # a recommendation's size (the embedded store reads it on the caller's thread)
        assert await store.read(keys[:140] + keys[-5:]) == expected[:140] + expected[-5:]

    run(make_feature_store, body)


def test_a_row_goes_stale_ttl_after_its_newest_event(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    async def body(store: OnlineStore) -> None:
        now = time.time()
        # Its newest event was DAY - 0.6 s ago: fresh for 0.6 s more.
        await store.merge([merge(at=now - DAY + 0.6, add={"clicks": 3})])
        (row,) = await store.read([key()])
        assert row is not None
        await asyncio.sleep(0.9)
        assert await store.read([key()]) == [None]
        # A merge on a stale row starts it afresh.
        await store.merge([merge(add={"clicks": 1})])
        (row,) = await store.read([key()])
        assert row is not None
        assert row["clicks"] == 1
        # An event older than the TTL leaves no row at all.
        await store.merge([merge(entity="old", at=now - 2 * DAY, add={"clicks": 1})])
        assert await store.read([key("old")]) == [None]

    run(make_feature_store, body)


def test_replace_writes_whole_rows(make_feature_store: Callable[[], OnlineStore]) -> None:
    async def body(store: OnlineStore) -> None:
        now = time.time()
        await store.merge([merge(add={"clicks": 9, "views": 4})])
        await store.replace(
            [
                (key(), {"clicks": 2.0, "recent": ["a", "b"], AT_FIELD: now}, DAY),
                (key("u9"), {"recent": [], AT_FIELD: now}, DAY),
                (key("gone"), {"clicks": 1.0, AT_FIELD: now - 2 * DAY}, DAY),
            ]
        )
        u1, u9, gone = await store.read([key(), key("u9"), key("gone")])
        assert u1 == {"clicks": 2, "recent": ["a", "b"], AT_FIELD: pytest.approx(now)}
        assert u9 == {"recent": [], AT_FIELD: pytest.approx(now)}
        assert gone is None
        with pytest.raises(ValueError, match=AT_FIELD):
            await store.replace([(key(), {"clicks": 1.0}, DAY)])

    run(make_feature_store, body)


def test_keys_are_bounded(make_feature_store: Callable[[], OnlineStore]) -> None:
    async def body(store: OnlineStore) -> None:
        with pytest.raises(ValueError, match="entity id"):
            await store.merge([merge(entity="x" * 257, add={"n": 1})])
        with pytest.raises(ValueError, match="tenant"):
            await store.merge([merge(tenant="", add={"n": 1})])

    run(make_feature_store, body)


def test_pushed_keeps_each_item_once_at_its_newest_time_newest_first() -> None:
    old = [("a", "3.0"), ("b", "2.0"), ("c", "1.0")]
    assert pushed(old, [("c", "2.5"), ("d", "2.0")], 4) == [
        ("a", "3.0"), ("c", "2.5"), ("d", "2.0"), ("b", "2.0")
    ]  # fmt: skip
    assert pushed(old, [("z", "0.5")], 3) == old  # older than every item kept
    assert pushed([("a", "10.0")], [("a", "9.0"), ("a", "11.0")], 3) == [("a", "11.0")]
    assert pushed(old, [], 1) == [("a", "3.0")]


def test_redis_down_is_unavailable(own_server: RedisServer) -> None:
    async def body() -> None:
        store = RedisFeatureStore(own_server.url, timeout_s=0.2)
        try:
            await store.merge([merge(add={"n": 1})])
            own_server.stop()
            with pytest.raises(FeatureStoreUnavailable, match="feature store"):
                await store.read([key()])
            with pytest.raises(FeatureStoreUnavailable):
                await store.merge([merge(add={"n": 1})])
        finally:
            await store.close()

    asyncio.run(body())


def test_a_redis_restarted_between_calls_answers_the_next_ones(own_server: RedisServer) -> None:
    """The pooled connections a restart (or failover) closed are retried once on a new
    connection: reads and merges right after it are answered, not unavailable (each
    pooled connection used to fail its next call: a degraded read, events not merged)."""

    async def body() -> None:
        store = RedisFeatureStore(own_server.url, timeout_s=1.0)
        try:
            await store.merge([merge(add={"n": 1})])
            await store.read([key(), key("u2")])  # the pipelined read's connection too
            own_server.stop()
            own_server.start()  # back, empty (no persistence)
            assert await store.read([key()]) == [None]
            own_server.stop()
            own_server.start()
            assert await store.read([key(), key("u2")]) == [None, None]
            own_server.stop()
            own_server.start()
            await store.merge([merge(add={"n": 1})])
            (row,) = await store.read([key()])
            assert row is not None
            assert row["n"] == 1  # merged once, not again by the retry
            own_server.stop()
            own_server.start()
            now = time.time()
            await store.replace([(key(), {"n": 5.0, AT_FIELD: now}, DAY)])
            assert await store.read([key()]) == [{"n": 5, AT_FIELD: pytest.approx(now)}]
        finally:
            await store.close()

    asyncio.run(body())


def test_redis_password_never_in_the_error(redis_with_password: RedisServer) -> None:
    async def body() -> None:
        url = redis_with_password.url.replace("redis://", "redis://:wrong-secret-pw@")
        store = RedisFeatureStore(url, timeout_s=0.5)
        try:
            with pytest.raises(FeatureStoreUnavailable) as e:
                await store.read([key()])
            assert "wrong-secret-pw" not in str(e.value)
        finally:
            await store.close()

    asyncio.run(body())


def test_sqlite_rows_are_shared_by_every_store_on_the_file(tmp_path: Path) -> None:
    async def body() -> None:
        one = SqliteFeatureStore(tmp_path / "f.db")
        two = SqliteFeatureStore(tmp_path / "f.db")
        try:
            await one.merge([merge(add={"clicks": 1})])
            (row,) = await two.read([key()])
            assert row is not None
            assert row["clicks"] == 1
        finally:
            await one.close()
            await two.close()

    asyncio.run(body())
