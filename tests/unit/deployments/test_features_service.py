"""The feature service on the embedded store and a real event log (SQLite files in
tmp_path): events become the user's and the item's features, tenants stay apart,
missing and stale rows answer defaults, a store outage degrades reads to defaults and
leaves the events in the log. And how `POST /v1/events` checks a batch, event by event."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from configs.features import FeatureDefinitions, load_definitions
from deployments.errors import MAX_NAME_CHARS
from deployments.http.events_routes import parse_events
from deployments.pipelines.features import Attributes, FeatureService, values
from stores.events import Event
from stores.events_sql import SqlEventLog, open_event_log
from stores.features import FeatureStoreUnavailable, Merge, Row, RowKey
from stores.features_sqlite import SqliteFeatureStore

LOG = logging.getLogger("test.features")
CATALOG: Attributes = {
    "shoe": {"category": "shoes", "brand": "Acme", "price": 80.0, "tags": ["trail", "run"]},
    "sock": {"category": "socks", "brand": "Acme", "price": 5.5, "tags": ["run"]},
    "hat": {"category": "hats", "brand": "Globex", "price": 20.0},
}


async def lookup(tenant: str, catalog: str, ids: list[str]) -> Attributes:
    assert catalog == "shop"
    return {i: CATALOG[i] for i in ids if i in CATALOG}


@pytest.fixture
def definitions() -> FeatureDefinitions:
    return load_definitions()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqlEventLog]:
    s = open_event_log(f"sqlite:///{tmp_path / 'registry.db'}")
    yield s
    s.close()


def service(
    definitions: FeatureDefinitions, tmp_path: Path, log: SqlEventLog | None
) -> FeatureService:
    return FeatureService(definitions, SqliteFeatureStore(tmp_path / "f.db"), log, lookup, LOG)


def ev(user: str, item: str, kind: str, ago_s: float = 0.0) -> Event:
    return Event(user, item, kind, datetime.now(UTC) - timedelta(seconds=ago_s), "shop")


def test_the_default_definitions_give_a_user_20_features(definitions: FeatureDefinitions) -> None:
    assert len(definitions.feature_views["user_activity"].features) == 20
    assert set(definitions.views_of("item")) == {"item_popularity"}


def test_events_move_the_users_and_the_items_features(
    definitions: FeatureDefinitions, tmp_path: Path, log: SqlEventLog
) -> None:
    async def body() -> None:
        svc = service(definitions, tmp_path, log)
        events = [
            ev("u1", "shoe", "view", 30),
            ev("u1", "sock", "click", 20),
            ev("u1", "shoe", "add_to_cart", 10),
            ev("u1", "shoe", "purchase", 5),
            ev("u2", "hat", "view", 1),
        ]
        done = await svc.ingest("tn_a", events, "shop")
        assert (done.accepted, done.features_updated) == (5, True)
        assert done.seq == 5
        got = await svc.read("tn_a", "user", "u1")
        assert got.fresh == {"user_activity": True}
        assert not got.degraded
        f = got.views["user_activity"]
        assert f["recent_items"] == ["shoe", "sock"]
        assert f["recent_purchases"] == ["shoe"]
        assert f["recent_clicks"] == ["sock"]
        assert (f["views"], f["clicks"], f["add_to_carts"], f["purchases"], f["events"]) == (
            1, 1, 1, 1, 4
        )  # fmt: skip
        # weights view 1, click 2, add_to_cart 4, purchase 8: shoes 13, socks 2
        assert f["category_affinity"] == {"shoes": round(13 / 15, 6), "socks": round(2 / 15, 6)}
        assert f["brand_affinity"] == {"Acme": 1.0}
        assert f["tag_affinity"]["run"] == pytest.approx(15 / 28, abs=1e-6)
        assert (f["spend"], f["cart_value"]) == (80, 80)
        assert f["first_event_at"] == pytest.approx(events[0].at.timestamp())
        assert f["last_event_at"] == pytest.approx(events[3].at.timestamp())
        assert f["last_purchase_at"] == pytest.approx(events[3].at.timestamp())
        item = await svc.read("tn_a", "item", "shoe")
        popularity = item.views["item_popularity"]
        assert (popularity["views"], popularity["purchases"], popularity["events"]) == (1, 1, 3)
        # A later batch adds to what is there, newest first in the recent items.
        await svc.ingest("tn_a", [ev("u1", "hat", "click")], "shop")
        f = (await svc.read("tn_a", "user", "u1")).views["user_activity"]
        assert f["recent_items"] == ["hat", "shoe", "sock"]
        assert (f["clicks"], f["events"]) == (2, 5)
        assert set(f["category_affinity"]) == {"shoes", "socks", "hats"}
        await svc.close()

    asyncio.run(body())


def test_one_tenants_events_never_move_anothers_features(
    definitions: FeatureDefinitions, tmp_path: Path, log: SqlEventLog
) -> None:
    async def body() -> None:
        svc = service(definitions, tmp_path, log)
        await svc.ingest("tn_a", [ev("u1", "shoe", "purchase")], "shop")
        before = await svc.read("tn_b", "user", "u1")
        await svc.ingest("tn_b", [ev("u1", "hat", "view")], "shop")
        a = (await svc.read("tn_a", "user", "u1")).views["user_activity"]
        b = (await svc.read("tn_b", "user", "u1")).views["user_activity"]
        assert before.fresh == {"user_activity": False}
        assert (a["recent_items"], a["purchases"], a["views"]) == (["shoe"], 1, 0)
        assert (b["recent_items"], b["purchases"], b["views"]) == (["hat"], 0, 1)
        assert [s.event.item for s in log.scan("tn_a", 0, 10)] == ["shoe"]
        await svc.close()

    asyncio.run(body())


def test_a_missing_user_and_a_stale_one_answer_the_defaults(
    definitions: FeatureDefinitions, tmp_path: Path
) -> None:
    async def body() -> None:
        svc = service(definitions, tmp_path, None)
        got = await svc.read("tn_a", "user", "nobody")
        view = definitions.feature_views["user_activity"]
        assert got.views["user_activity"] == values(view, None)
        assert got.fresh == {"user_activity": False}
        assert got.views["user_activity"]["recent_items"] == []
        assert got.views["user_activity"]["category_affinity"] == {}
        assert got.views["user_activity"]["clicks"] == 0
        # An event older than the TTL (30 days) leaves the user at the defaults.
        await svc.ingest("tn_a", [ev("old", "shoe", "click", 31 * 86400)], "shop")
        stale = await svc.read("tn_a", "user", "old")
        assert stale.fresh == {"user_activity": False}
        assert stale.views["user_activity"]["clicks"] == 0
        await svc.close()

    asyncio.run(body())


def test_declared_defaults_win(tmp_path: Path) -> None:
    definitions = FeatureDefinitions.model_validate(
        {
            "entities": {"user": {}},
            "feature_views": {
                "u": {
                    "entity": "user",
                    "ttl_s": 60,
                    "features": {
                        "clicks": {"kind": "count", "default": 7},
                        "cats": {
                            "kind": "affinity",
                            "attribute": "category",
                            "default": {"any": 1.0},
                        },
                    },
                }
            },
        }
    )
    assert values(definitions.feature_views["u"], None) == {"clicks": 7, "cats": {"any": 1.0}}


class DownStore:
    """A store whose every call fails, as Redis does while it restarts."""

    async def read(self, keys: Any) -> list[Row | None]:
        raise FeatureStoreUnavailable("feature store redis:0 failed: down")

    async def merge(self, merges: Any) -> None:
        raise FeatureStoreUnavailable("feature store redis:0 failed: down")

    async def replace(self, rows: Any) -> None:
        raise FeatureStoreUnavailable("feature store redis:0 failed: down")

    async def close(self) -> None:
        pass


class Meter:
    """Counts as the replica's Prometheus metrics would."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.events: list[tuple[int, int]] = []

    def store_failed(self, op: str) -> None:
        self.failed.append(op)

    def events_seen(self, accepted: int, rejected: int) -> None:
        self.events.append((accepted, rejected))


def test_a_store_outage_reads_defaults_and_keeps_the_events(
    definitions: FeatureDefinitions, log: SqlEventLog
) -> None:
    async def body() -> None:
        meter = Meter()
        svc = FeatureService(definitions, DownStore(), log, lookup, LOG, meter)
        done = await svc.ingest("tn_a", [ev("u1", "shoe", "click")], "shop")
        assert (done.accepted, done.features_updated) == (1, False)
        assert [s.event.item for s in log.for_user("tn_a", "u1", 5)] == ["shoe"]
        got = await svc.read("tn_a", "user", "u1")
        assert got.degraded
        assert got.fresh == {"user_activity": False}
        assert got.views["user_activity"]["clicks"] == 0
        assert svc.store_failures == 2
        assert meter.failed == ["merge", "read"]
        svc.counted(1, 2)
        assert meter.events == [(1, 2)]

    asyncio.run(body())


def test_materialized_rows_equal_what_the_events_would_have_built(
    definitions: FeatureDefinitions, tmp_path: Path, log: SqlEventLog
) -> None:
    history = [
        ev(f"u{n % 3}", ["shoe", "sock", "hat"][n % 3 - 1], "click", 100 - n) for n in range(12)
    ]

    async def body() -> None:
        live = service(definitions, tmp_path / "live", log)
        for event in history:
            await live.ingest("tn_a", [event], "shop")
        bulk = FeatureService(
            definitions, SqliteFeatureStore(tmp_path / "bulk.db"), None, None, LOG
        )
        await bulk.store.replace(bulk.rows("tn_a", history, CATALOG))
        for user in ("u0", "u1", "u2"):
            assert (await bulk.read("tn_a", "user", user)).views == (
                await live.read("tn_a", "user", user)
            ).views
        await live.close()
        await bulk.close()

    asyncio.run(body())


def test_a_rebuilt_row_starts_again_after_a_gap_longer_than_its_ttl(
    definitions: FeatureDefinitions, tmp_path: Path, log: SqlEventLog
) -> None:
    """Online, a row gone stale (its TTL past its newest event) starts again from
    nothing at the next event; a row rebuilt from the same history does the same."""
    day = 86400.0
    history = [
        ev("u1", "a", "view", 50 * day),
        ev("u1", "b", "view", 45 * day),
        ev("u1", "c", "view", 10 * day),  # 35 days after b: the 30-day row went stale
        ev("u1", "d", "view", 0),
    ]

    async def body() -> None:
        live = service(definitions, tmp_path / "live", log)
        for event in history:
            await live.ingest("tn_a", [event], "shop")
        online = (await live.read("tn_a", "user", "u1")).views["user_activity"]
        assert (online["views"], online["recent_items"]) == (2, ["d", "c"])
        bulk = FeatureService(
            definitions, SqliteFeatureStore(tmp_path / "bulk.db"), None, None, LOG
        )
        await bulk.store.replace(bulk.rows("tn_a", history, CATALOG))
        assert (await bulk.read("tn_a", "user", "u1")).views["user_activity"] == online
        await live.close()
        await bulk.close()

    asyncio.run(body())


def test_a_late_event_does_not_push_newer_items_out(
    definitions: FeatureDefinitions, tmp_path: Path, log: SqlEventLog
) -> None:
    """Recent items are ordered by the events' times, not by arrival, so the online row
    and the one rebuilt from the same events agree."""
    history = [ev("u1", f"new{n}", "view", 1800 - 90 * n) for n in range(20)]
    history.append(ev("u1", "old", "view", 10 * 86400))

    async def body() -> None:
        svc = service(definitions, tmp_path, log)
        for event in history:
            await svc.ingest("tn_a", [event], "shop")
        online = (await svc.read("tn_a", "user", "u1")).views["user_activity"]
        assert online["recent_items"] == [f"new{n}" for n in reversed(range(20))]
        bulk = FeatureService(
            definitions, SqliteFeatureStore(tmp_path / "bulk.db"), None, None, LOG
        )
        await bulk.store.replace(bulk.rows("tn_a", history, CATALOG))
        assert (await bulk.read("tn_a", "user", "u1")).views["user_activity"] == online
        await svc.close()
        await bulk.close()

    asyncio.run(body())


def test_merges_touch_one_row_per_view_and_entity(definitions: FeatureDefinitions) -> None:
    svc = FeatureService(definitions, DownStore(), None, None, LOG)
    merges: list[Merge] = svc.merges(
        "tn_a", [ev("u1", "shoe", "view"), ev("u1", "sock", "view"), ev("u2", "shoe", "view")], {}
    )
    keys = {m.key for m in merges}
    assert keys == {
        RowKey("tn_a", "user_activity", "u1"),
        RowKey("tn_a", "user_activity", "u2"),
        RowKey("tn_a", "item_popularity", "shoe"),
        RowKey("tn_a", "item_popularity", "sock"),
    }
    # No catalog attributes: no affinity entries, no sums.
    assert not any(":" in name for m in merges for name in m.add)


# ---- a batch, event by event ------------------------------------------------------


def test_parse_keeps_the_good_events_and_names_the_bad_fields() -> None:
    now = time.time()
    raw: list[dict[str, Any]] = [
        {"user": "u1", "item": "i1", "type": "view"},
        {"user": "u1", "item": "i2", "type": "like"},
        {"user": "", "item": "i3", "type": "click"},
        {"user": "u1", "item": "i4", "type": "click", "timestamp": "2026-11-30T10:00:00Z"},
        {"user": "u1", "item": "i5", "type": "click", "timestamp": now + 3600},
        {"user": "u1", "item": "i6", "type": "click", "timestamp": "2026-11-30T10:00:00"},
        {"user": "u1", "item": "i7", "type": "purchase", "colour": "secret-value"},
        {"user": "u1", "type": "click"},
        {"user": "u1", "item": "i9", "type": "add_to_cart", "timestamp": now - 5},
    ]
    good, errors = parse_events(raw, now, 300, "shop")
    assert [e.item for e in good] == ["i1", "i4", "i9"]
    assert good[1].at == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert good[2].at.timestamp() == pytest.approx(now - 5)
    assert all(e.catalog == "shop" for e in good)
    assert [(e["index"], e["field"]) for e in errors] == [
        (1, "events.1.type"),
        (2, "events.2.user"),
        (4, "events.4.timestamp"),
        (5, "events.5.timestamp"),
        (6, "events.6.colour"),
        (7, "events.7.item"),
    ]
    assert "future" in errors[2]["message"]
    assert "time zone" in errors[3]["message"]
    assert errors[4]["message"] == "unknown field"
    assert not any("secret-value" in e["message"] or "like" in e["message"] for e in errors)


def test_an_unknown_field_of_any_length_is_named_cut_to_the_name_bound() -> None:
    name = "k" * 100_000
    good, errors = parse_events(
        [{"user": "u1", "item": "i1", "type": "view", name: 1}], time.time(), 300, None
    )
    assert good == []
    assert errors == [
        {"index": 0, "field": f"events.0.{'k' * MAX_NAME_CHARS}", "message": "unknown field"}
    ]


def test_an_event_that_is_not_an_object_is_named_by_its_index() -> None:
    good, errors = parse_events(
        [{"user": "u", "item": "i", "type": "view"}, 7], time.time(), 300, None
    )  # type: ignore[list-item]
    assert len(good) == 1
    assert [(e["index"], e["field"]) for e in errors] == [(1, "events.1")]


def test_a_timestamp_past_the_calendar_in_utc_is_named_and_the_batch_kept() -> None:
    """Valid in its own offset, outside years 1-9999 once in UTC: a 400 entry for the
    event, the others stored."""
    raw: list[dict[str, Any]] = [
        {"user": "u", "item": "i1", "type": "view", "timestamp": "0001-01-01T00:00:00+05:00"},
        {"user": "u", "item": "i2", "type": "view"},
        {"user": "u", "item": "i3", "type": "view", "timestamp": "9999-12-31T23:59:59-05:00"},
    ]
    good, errors = parse_events(raw, time.time(), 300, None)
    assert [e.item for e in good] == ["i2"]
    assert [(e["field"], e["message"]) for e in errors] == [
        ("events.0.timestamp", "out of range"),
        ("events.2.timestamp", "out of range"),
    ]


def test_a_boolean_timestamp_is_named_not_read_as_1970() -> None:
    raw: list[dict[str, Any]] = [
        {"user": "u", "item": "i1", "type": "view", "timestamp": True},
        {"user": "u", "item": "i2", "type": "view", "timestamp": 1_700_000_000},
    ]
    good, errors = parse_events(raw, time.time(), 300, None)
    assert [e.item for e in good] == ["i2"]
    assert errors == [
        {"index": 0, "field": "events.0.timestamp", "message": "a boolean is not a time"}
    ]
