"""The feature service where something goes wrong, on both online stores (the embedded
SQLite file in tmp_path and a real redis-server the fixtures start): sums that overflow
a double, a catalog store that does not answer while events are merged, a store outage
logged once rather than per request; and `GET /v1/features/...` with ids holding a line
break, over HTTP (FastAPI's test client, the service's error handlers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from configs.features import load_definitions
from deployments.pipelines.features import Attributes, FeatureService, ItemLookup
from stores.events import Event
from stores.events_sql import SqlEventLog, open_event_log
from stores.features import OnlineStore
from stores.features_sqlite import SqliteFeatureStore
from tests.unit.deployments.fakes import events_app
from tests.unit.deployments.test_features_service import DownStore, Meter

LOG = logging.getLogger("test.features.failures")
TENANT = "default"  # auth off: the one tenant


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqlEventLog]:
    s = open_event_log(f"sqlite:///{tmp_path / 'registry.db'}")
    yield s
    s.close()


def ev(user: str, item: str, kind: str) -> Event:
    return Event(user, item, kind, datetime.now(UTC), "shop")


def test_a_sum_past_the_largest_double_reads_its_default_and_the_rest_merges(
    make_feature_store: Callable[[], OnlineStore],
) -> None:
    """Prices near 1e308 are finite (a catalog takes them), their sum is not: Redis
    refused to add it, so the row's script stopped half way (no recent items, no newest
    time, no expiry) and the whole batch counted as a store outage; SQLite kept null.
    The sum is left out, everything else merges, and both read the default. A stored
    sum that passes the largest double stays there on both stores, read as the default
    (SQLite's null had started again from nothing, Redis's long double had gone on)."""

    async def items(tenant: str, catalog: str, ids: list[str]) -> Attributes:
        return {"big": {"price": 1e308, "category": "x"}}

    async def body() -> None:
        meter = Meter()
        svc = FeatureService(load_definitions(), make_feature_store(), None, items, LOG, meter)
        try:
            batch = [
                ev("u", "big", "purchase"),
                ev("u", "big", "purchase"),
                ev("u2", "big", "view"),
            ]
            assert await svc.merge(TENANT, batch, "shop")
            got = (await svc.read(TENANT, "user", "u")).views["user_activity"]
            assert (got["purchases"], got["spend"]) == (2, 0)
            assert got["recent_purchases"] == ["big"]
            assert got["last_event_at"] > 0
            assert got["category_affinity"] == {"x": 1.0}
            assert (await svc.read(TENANT, "user", "u2")).views["user_activity"]["views"] == 1
            # one more: a sum of 1e308 (finite) is kept; past it, the default again
            assert await svc.merge(TENANT, [ev("u", "big", "purchase")], "shop")
            got = (await svc.read(TENANT, "user", "u")).views["user_activity"]
            assert (got["purchases"], got["spend"]) == (3, 1e308)
            assert type(got["spend"]) is float  # not a 309-digit int no encoder takes
            assert await svc.merge(TENANT, [ev("u", "big", "purchase")], "shop")
            got = (await svc.read(TENANT, "user", "u")).views["user_activity"]
            assert (got["purchases"], got["spend"]) == (4, 0)
            assert await svc.merge(TENANT, [ev("u", "big", "purchase")], "shop")
            got = (await svc.read(TENANT, "user", "u")).views["user_activity"]
            assert (got["purchases"], got["spend"]) == (5, 0)
            assert meter.failed == []
        finally:
            await svc.close()

    asyncio.run(body())


def test_a_catalog_store_that_does_not_answer_leaves_the_events_unmerged(
    make_feature_store: Callable[[], OnlineStore], log: SqlEventLog
) -> None:
    """The sharded ingress reads the items' attributes from the catalog store after the
    events are appended: its failure was a 500 for a batch that was kept (and a keyed
    repeat then answered `features_updated: true` with the rows never merged). Now the
    batch is acknowledged with `features_updated: false`, as when the feature store is
    down, and nothing is merged without the attributes."""
    down = True

    async def items(tenant: str, catalog: str, ids: list[str]) -> Attributes:
        if down:
            raise OperationalError("SELECT ...", {}, Exception("connection refused"))
        return {"shoe": {"category": "shoes"}}

    async def body() -> None:
        nonlocal down
        meter = Meter()
        svc = FeatureService(load_definitions(), make_feature_store(), log, items, LOG, meter)
        try:
            done = await svc.ingest(TENANT, [ev("u1", "shoe", "click")], "shop")
            assert (done.accepted, done.features_updated) == (1, False)
            assert [s.event.item for s in log.scan(TENANT, 0, 10)] == ["shoe"]
            assert meter.failed == ["merge"]
            got = await svc.read(TENANT, "user", "u1")
            assert got.fresh == {"user_activity": False}  # not merged without attributes
            down = False  # what a repeat of the batch (or a rebuild) then merges
            assert await svc.merge(TENANT, [ev("u1", "shoe", "click")], "shop")
            views = (await svc.read(TENANT, "user", "u1")).views["user_activity"]
            assert (views["clicks"], views["category_affinity"]) == (1, {"shoes": 1.0})
        finally:
            await svc.close()

    asyncio.run(body())


def test_a_store_outage_is_logged_once_then_its_end(caplog: pytest.LogCaptureFixture) -> None:
    """Every failed call is counted; the log says when the outage starts and when the
    store answers again, not once per request (a warning each would flood the log of a
    replica answering hundreds of requests a second while Redis is down)."""

    class Flaky(DownStore):
        down = True

        async def read(self, keys: Any) -> list[Any]:
            if self.down:
                return await super().read(keys)
            return [None] * len(keys)

    async def body() -> None:
        meter = Meter()
        store = Flaky()
        svc = FeatureService(load_definitions(), store, None, None, LOG, meter)
        with caplog.at_level(logging.INFO, logger=LOG.name):
            for _ in range(5):
                assert (await svc.read(TENANT, "user", "u1")).degraded
                assert (await svc.read_rows(TENANT, "item_popularity", ["a", "b"]))[1]
            assert not await svc.merge(TENANT, [ev("u1", "shoe", "click")], None)
            store.down = False
            assert not (await svc.read(TENANT, "user", "u1")).degraded
            store.down = True
            assert (await svc.read(TENANT, "user", "u1")).degraded
        assert meter.failed == ["read"] * 10 + ["merge", "read"]
        assert svc.store_failures == 12
        said = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert said == [
            (logging.WARNING, "feature store unavailable"),
            (logging.INFO, "feature store answers again"),
            (logging.WARNING, "feature store unavailable"),
        ]

    asyncio.run(body())


# ---- GET /v1/features/{entity}/{id}: any id an event can carry -------------------------


@pytest.fixture
def client(
    tmp_path: Path, log: SqlEventLog, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    async def lookup(tenant: str, catalog: str, ids: list[str]) -> Attributes:
        return {"gold": {"price": 1e20}}

    items: ItemLookup = lookup
    svc = FeatureService(load_definitions(), SqliteFeatureStore(tmp_path / "f.db"), log, items, LOG)

    app = events_app(svc, monkeypatch)
    with TestClient(app) as c:
        yield c


def test_ids_with_a_line_break_read_their_own_features(client: TestClient) -> None:
    """Events take an id holding a line break; its features were a 404 (no such route)
    in the middle of the id, and at its end the features of the id without it: another
    end user's."""
    ids = {"abc": "purchase", "abc\n": "click", "a\nb": "add_to_cart", "x\r\n": "view"}
    events = [{"user": i, "item": "sku-1", "type": t} for i, t in ids.items()]
    assert client.post("/v1/events", json={"events": events}).status_code == 200
    counts = {"purchase": "purchases", "click": "clicks", "add_to_cart": "add_to_carts",
              "view": "views"}  # fmt: skip
    for user, kind in ids.items():
        got = client.get(f"/v1/features/user/{quote(user, safe='')}")
        assert got.status_code == 200, (user, got.text)
        doc = got.json()
        assert doc["id"] == user
        views = doc["views"]["user_activity"]
        assert views["events"] == 1, user
        assert views[counts[kind]] == 1, user
    got = client.get(f"/v1/features/item/{quote('sku-1', safe='')}")
    assert got.json()["views"]["item_popularity"]["events"] == 4
    # ids with a slash still read theirs; an empty one is still named
    slash = {"events": [{"user": "a/b", "item": "i", "type": "view"}]}
    assert client.post("/v1/events", json=slash).status_code == 200
    assert client.get("/v1/features/user/a/b").json()["views"]["user_activity"]["views"] == 1
    empty = client.get("/v1/features/user/")
    assert empty.status_code == 400
    assert empty.json()["error"]["message"].startswith("entity_id: ")


def test_a_sum_past_64_bits_is_answered(client: TestClient) -> None:
    """One purchase of an item priced 1e20 (a finite number, which a catalog takes):
    the user's spend read back as a 21-digit int, which the answer's encoder refuses,
    so every read of the user's features was a 500 until the row went stale."""
    event = {"user": "rich", "item": "gold", "type": "purchase"}
    assert client.post("/v1/events", json={"catalog": "shop", "events": [event]}).status_code == 200
    got = client.get("/v1/features/user/rich")
    assert got.status_code == 200, got.text
    views = got.json()["views"]["user_activity"]
    assert (views["purchases"], views["spend"]) == (1, 1e20)
