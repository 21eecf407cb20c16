"""The recommendation pipeline over real parts, without Ray: the built recommender
package, the catalog store and event log on SQLite, the online features on a real
redis-server. Redis going away degrades answers to popular items (flagged), loses no
acknowledged event, and a rebuild from the log brings the user's features back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from configs.features import load_definitions
from configs.schema import RecommendationSettings
from deployments.pipelines.features import FeatureService
from deployments.pipelines.features_wiring import catalog_items
from deployments.pipelines.recommend import (
    CatalogMissing,
    PopularItems,
    RecommendQuery,
    RecommendService,
)
from deployments.pipelines.search import SearchService
from models import ArtifactRef, ArtifactStore
from models.recommender import Recommender
from stores.catalog import Item
from stores.catalog_sql import open_catalog_store
from stores.events import Event
from stores.events_sql import open_event_log
from stores.features import FeatureStoreUnavailable
from stores.features_redis import RedisFeatureStore
from tests.conftest import ARTIFACTS_DIR
from tests.redis_server import RedisServer

LOG = logging.getLogger("test")
TENANT = "tn-rec"
SPACE = "recommender/v1"


def _package() -> tuple[Path, str]:
    manifest = ARTIFACTS_DIR / "recommender" / "manifest.json"
    if not manifest.is_file():
        pytest.fail("the recommender is not built: run `make models`")
    import json

    entry = json.loads(manifest.read_text())["versions"]["v1"]
    return ARTIFACTS_DIR / entry["file"], str(entry["sha256"])


@pytest.fixture(scope="module")
def recommender(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    path, sha = _package()
    store = ArtifactStore(cache_dir=tmp_path_factory.mktemp("cache"))
    return Recommender(store.resolve(ArtifactRef(uri=str(path), sha256=sha)).path)


def _items() -> list[Item]:
    out = []
    for category, brand in (("hats", "Hatters"), ("socks", "Woolly"), ("mugs", "Clayworks")):
        for n in range(12):
            out.append(
                Item(f"{category}-{n}", {"title": f"{category} number {n}", "brand": brand},
                     {"category": category, "brand": brand, "price": 10.0 + n})
            )  # fmt: skip
    return out


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    from tests.conftest import free_port

    server = RedisServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def parts(
    tmp_path: Path, redis_server: RedisServer, recommender: Recommender
) -> Iterator[dict[str, Any]]:
    url = f"sqlite:///{tmp_path}/registry.db"
    catalogs = open_catalog_store(url)

    async def no_text_model(tenant: str, space: str, texts: list[str]) -> Any:
        raise AssertionError("only the recommender's space is kept here")

    search = SearchService(catalogs, no_text_model, 0.05, LOG, backfill_delay_s=0)
    events = open_event_log(url)
    store = RedisFeatureStore(redis_server.url, timeout_s=0.2)
    features = FeatureService(load_definitions(None), store, events, catalog_items(search), LOG)
    settings = RecommendationSettings(popular_refresh_s=0.01)
    service = RecommendService(
        "recommender", {"v1": recommender}, search, features,
        PopularItems(events, settings, LOG), settings,
    )  # fmt: skip
    search.item_model = ("recommender", service.item_vectors)
    yield {"search": search, "features": features, "service": service, "events": events,
           "redis": redis_server}  # fmt: skip
    asyncio.run(search.close())
    catalogs.close()
    events.close()


def _query(user: str, **kw: Any) -> RecommendQuery:
    base: dict[str, Any] = {"k": 5, "filters": None, "exclude_seen": True}
    return RecommendQuery(TENANT, "shop", user, "v1", **{**base, **kw})


def _event(user: str, item: str, kind: str) -> Event:
    from datetime import UTC, datetime

    return Event(user, item, kind, datetime.now(UTC), "shop")


def test_recommendations_follow_events_and_survive_a_redis_outage(parts: dict[str, Any]) -> None:
    search, features = parts["search"], parts["features"]
    service: RecommendService = parts["service"]

    async def run() -> None:
        await search.start([SPACE])
        await search.upsert(TENANT, "shop", _items())
        index = search.catalogs[(TENANT, "shop")]
        assert index.complete(SPACE)
        vectors = index.vectors_of(SPACE, ["hats-1", "socks-1"])
        assert vectors.shape == (2, 64)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

        cold = await service.recommend(_query("ann"))
        assert cold.source == "popular"
        assert not cold.degraded

        done = await features.ingest(
            TENANT, [_event("ann", "hats-1", "purchase"), _event("ann", "hats-2", "click")], "shop"
        )
        assert done.features_updated
        warm = await service.recommend(_query("ann", k=6))
        assert warm.source == "model"
        ids = [h.item.id for h in warm.hits]
        assert len(ids) == 6
        assert not {"hats-1", "hats-2"} & set(ids)
        assert sum(i.startswith("hats") for i in ids) >= 3, ids
        socks = await service.recommend(_query("ann", filters={"category": "socks"}))
        assert {h.item.attributes["category"] for h in socks.hits} == {"socks"}

        parts["redis"].stop()
        down = await service.recommend(_query("ann", filters={"category": "mugs"}))
        assert down.degraded
        assert down.source == "popular"
        assert {h.item.attributes["category"] for h in down.hits} == {"mugs"}
        kept = await features.ingest(TENANT, [_event("ann", "socks-4", "purchase")], "shop")
        assert kept.accepted == 1
        assert not kept.features_updated  # the log has it; the rows are behind
        logged = [s.event.item for s in parts["events"].scan(TENANT, 0, 100)]
        assert logged == ["hats-1", "hats-2", "socks-4"]

        parts["redis"].start()  # empty: no persistence
        after = await service.recommend(_query("ann"))
        assert after.source == "popular"  # the rows are gone until rebuilt
        history = [s.event for s in parts["events"].scan(TENANT, 0, 100)]
        lookup = catalog_items(search)
        assert lookup is not None
        attrs = await lookup(TENANT, "shop", [e.item for e in history])
        rows = features.rows(TENANT, history, attrs)
        await features.store.replace(rows)
        rebuilt = await service.recommend(_query("ann"))
        assert rebuilt.source == "model"
        assert not {"hats-1", "hats-2", "socks-4"} & {h.item.id for h in rebuilt.hits}

        with pytest.raises(CatalogMissing):
            await service.recommend(RecommendQuery(TENANT, "absent", "ann", "v1", 5, None, True))

    asyncio.run(run())


class _DownStore:
    """An online store that never answers."""

    async def read(self, keys: Any) -> Any:
        raise FeatureStoreUnavailable("feature store down")

    async def merge(self, merges: Any) -> None:
        raise FeatureStoreUnavailable("feature store down")

    async def replace(self, rows: Any) -> None:
        raise FeatureStoreUnavailable("feature store down")

    async def close(self) -> None:
        pass


def test_an_answer_steered_by_the_item_in_view_says_when_the_store_is_down(
    parts: dict[str, Any],
) -> None:
    search, features = parts["search"], parts["features"]
    service: RecommendService = parts["service"]

    async def run() -> None:
        await search.start([SPACE])
        await search.upsert(TENANT, "shop", _items())
        up = await service.recommend(_query("ann", context_item="hats-1"))
        assert (up.source, up.degraded) == ("model", False)
        features.store, redis = _DownStore(), features.store
        try:
            down = await service.recommend(_query("ann", context_item="hats-1"))
        finally:
            features.store = redis
        assert down.source == "model"  # the items most like the one in view
        assert "hats-1" not in {h.item.id for h in down.hits}
        assert down.degraded

    asyncio.run(run())


def test_popular_items_rank_by_the_definitions_weights_within_the_catalog(
    tmp_path: Path,
) -> None:
    """What a cold user gets: the catalog's items ranked by the feature definitions'
    `event_weights` (here a view outweighs a purchase), never another catalog's."""
    events = open_event_log(f"sqlite:///{tmp_path / 'events.db'}")
    now = datetime.now(UTC)
    events.append(
        "acme",
        [Event("u1", "viewed", "view", now, "shop"), Event("u2", "viewed", "view", now, "shop"),
         Event("u1", "bought", "purchase", now, "shop"),
         Event("u3", "mug", "purchase", now, "kitchen")],
    )  # fmt: skip
    settings = RecommendationSettings()

    async def run() -> None:
        popular = PopularItems(events, settings, LOG, {"view": 10.0, "purchase": 1.0})
        assert await popular.of("acme", "shop") == ["viewed", "bought"]
        assert await popular.of("acme", "kitchen") == ["mug"]
        default = PopularItems(events, settings, LOG)  # the shipped weights: purchase 8x
        assert await default.of("acme", "shop") == ["bought", "viewed"]

    asyncio.run(run())
    events.close()


def test_a_cold_users_filter_finds_popular_items_well_past_the_first_thousand(
    tmp_path: Path,
) -> None:
    """1,500 engaged items: the popular list keeps them all in order, so a filter that
    only items ranked past 1,000 pass still answers them most engaged first."""
    events = open_event_log(f"sqlite:///{tmp_path / 'events.db'}")
    now = datetime.now(UTC)
    batch = [
        Event(f"u{n}-{v}", f"item-{n:04d}", "view", now, "shop")
        for n in range(1500)
        for v in range(1 + (1500 - n) // 100)
    ]
    events.append("acme", batch)

    async def run() -> None:
        popular = PopularItems(events, RecommendationSettings(), LOG)
        ids = await popular.of("acme", "shop")
        assert len(ids) == 1500
        assert ids[1200:1203] == ["item-1200", "item-1201", "item-1202"]

    asyncio.run(run())
    events.close()


class _ItemRowsDown:
    """An online store whose reads of many item rows fail (a timeout on the candidates'
    150 rows) while the user's one row still reads."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def read(self, keys: Any) -> Any:
        if any(key.view == "item_popularity" for key in keys):
            raise FeatureStoreUnavailable("feature store timed out")
        return await self.inner.read(keys)

    async def merge(self, merges: Any) -> None:
        await self.inner.merge(merges)

    async def replace(self, rows: Any) -> None:
        await self.inner.replace(rows)

    async def close(self) -> None:
        pass


def test_an_answer_ranked_without_the_items_rows_says_degraded(parts: dict[str, Any]) -> None:
    """The ranker's largest weight is the items' popularity, read from their online rows:
    ranked without them the answer is not the model's usual one, and says so."""
    search, features = parts["search"], parts["features"]
    service: RecommendService = parts["service"]

    async def run() -> None:
        await search.start([SPACE])
        await search.upsert(TENANT, "shop", _items())
        crowd = [_event(f"u{n}", "mugs-4", "purchase") for n in range(20)]
        await features.ingest(TENANT, [_event("ann", "hats-1", "purchase"), *crowd], "shop")
        up = await service.recommend(_query("ann"))
        assert (up.source, up.degraded) == ("model", False)
        features.store, redis = _ItemRowsDown(features.store), features.store
        try:
            down = await service.recommend(_query("ann"))
        finally:
            features.store = redis
        assert down.source == "model"  # the user's row answered
        assert down.degraded
        assert "hats-1" not in {h.item.id for h in down.hits}

    asyncio.run(run())


def test_items_topped_up_past_the_ranked_ones_score_below_them(parts: dict[str, Any]) -> None:
    """Items without a vector yet (applied by the catalog follower a moment before their
    vectors are read) can only top the answer up: after the ranked ones, and scored
    below them, so the scores still read best first."""
    search, features = parts["search"], parts["features"]
    service: RecommendService = parts["service"]

    async def run() -> None:
        await search.start([SPACE])
        await search.upsert(TENANT, "shop", _items())
        await features.ingest(TENANT, [_event("ann", "hats-1", "purchase")], "shop")
        index = search.catalogs[(TENANT, "shop")]
        index.upsert_many(
            [Item(f"new-{n}", {"title": f"hat {n}"}, {"category": "hats"}) for n in range(5)]
        )  # items as the follower applies them, their vectors not read yet
        got = await service.recommend_here(_query("ann", k=40), index)
        ids = [h.item.id for h in got.hits]
        assert len(ids) == len(set(ids)) == 40
        assert {f"new-{n}" for n in range(5)} <= set(ids[-5:])
        scores = [h.score for h in got.hits]
        assert scores == sorted(scores, reverse=True), scores
        cold = await service.recommend_here(_query("nobody", k=3), index)
        assert [h.score for h in cold.hits] == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3)]

    asyncio.run(run())


def test_every_k_answers_each_eligible_item_once_best_first_within_the_tenant(
    parts: dict[str, Any],
) -> None:
    """k from 1 to past the catalog, with and without filters and an item in view: as
    many items as asked or as there are (the catalog's, within the filters, less what
    the user touched and the item in view), each once, scores best first; the same item
    ids under another tenant, and that tenant's events, never show."""
    search, features = parts["search"], parts["features"]
    service: RecommendService = parts["service"]
    other = "tn-other"

    async def run() -> None:
        await search.start([SPACE])
        await search.upsert(TENANT, "shop", _items())
        await search.upsert(other, "shop", [*_items(), Item("theirs", {"title": "mugs x"})])
        await features.ingest(
            other, [_event(f"o{n}", "theirs", "purchase") for n in range(10)], "shop"
        )
        await features.ingest(TENANT, [_event("ann", "socks-3", "click")], "shop")
        cases = [("ann", None, None), ("ann", {"category": "mugs"}, None),
                 ("ann", None, "hats-4"), ("nobody", {"price": {"lt": 15}}, None),
                 ("nobody", None, "mugs-2"), ("o1", None, None)]  # fmt: skip
        for user, filters, context in cases:
            for k in (1, 7, 35, 36, 100):
                q = _query(user, k=k, filters=filters, context_item=context)
                got = await service.recommend(q)
                ids = [h.item.id for h in got.hits]
                # what the user touched, unless the store did not answer in time
                touched = {"socks-3"} if user == "ann" and not got.degraded else set()
                eligible = {
                    i.id
                    for i in _items()
                    if (filters is None or _passes(i, filters)) and i.id not in {*touched, context}
                }
                assert len(ids) == len(set(ids)) == min(k, len(eligible)), (user, k, ids)
                assert set(ids) <= eligible, (user, filters, context, k)
                scores = [h.score for h in got.hits]
                assert scores == sorted(scores, reverse=True), (user, k, scores)

    asyncio.run(run())


def _passes(item: Item, filters: dict[str, Any]) -> bool:
    from deployments.pipelines.filters import AttributeColumns

    columns = AttributeColumns()
    columns.set(0, item.attributes)
    return bool(columns.mask(filters, 1)[0])
