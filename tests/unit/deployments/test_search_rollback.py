"""A version that leaves the set of kept spaces and comes back (the runbook's promote
to 100, then rollback): its index is retained for a while and serves at once; past
that, its stored vectors are read back at once, page by page, without the backfill's
delay; and meanwhile a search answers from any complete index, never 503."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import deployments.pipelines.search as search_module
from deployments.errors import ServekitError, Unavailable
from deployments.http.search_routes import index_version
from deployments.pipelines.search import SearchService
from deployments.pipelines.shards import ShardSet, shard_of
from stores.catalog import Item
from stores.catalog_sql import open_catalog_store
from tests.unit.deployments.test_search_service import LOG, _items, fake_embed
from tests.unit.deployments.test_shards import InProcessShard

V1, V2, V3 = "m/v1", "m/v2", "m/v3"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


class Embedder:
    """The test embedder, counting the texts it embeds per space."""

    def __init__(self) -> None:
        self.texts: dict[str, int] = {}

    async def __call__(self, tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
        self.texts[space] = self.texts.get(space, 0) + len(texts)
        return await fake_embed(space, texts)


class Router:
    """What `index_version` asks of the replica's router: a split and its weights."""

    def __init__(self, weights: dict[str, int], pick: str) -> None:
        self._weights, self.pick = weights, pick

    def choose(self, model: str, pinned: str | None, source: str, key: str | None) -> str:
        return pinned or self.pick

    def weights(self, model: str) -> dict[str, int]:
        return {v: w for v, w in self._weights.items() if w > 0}


def _host(weights: dict[str, int], pick: str) -> Any:
    return SimpleNamespace(router=Router(weights, pick))


def _version(service: SearchService, host: Any, pinned: str | None = None) -> str:
    return index_version(host, service, "acme", "shop", "m", pinned, None)


async def _search_ids(service: SearchService, space: str, text: str) -> list[str]:
    q = (await fake_embed(space, [text]))[0]
    return [h.item.id for h in service.search("acme", "shop", space, q, text, 3, None, False).hits]


class SlowVectors:
    """A store whose `get_vectors` waits for `release` (a large catalog's reload), and
    counts its calls."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.release = threading.Event()
        self.release.set()
        self.calls = 0

    def get_vectors(self, *args: Any) -> dict[str, bytes]:
        self.calls += 1
        self.release.wait(10)
        got: dict[str, bytes] = self.store.get_vectors(*args)
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_rollback_within_the_retention_finds_the_index_ready_at_once(url: str) -> None:
    """start [v1, v2], upsert, start [v2], start [v1, v2]: v1 is ready at once, with
    nothing embedded again (and the backfill, an hour away, not needed)."""

    async def run() -> None:
        embed = Embedder()
        service = SearchService(open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=3600)
        await service.start([V1, V2])
        await service.upsert("acme", "shop", _items())
        before = await _search_ids(service, V1, "red trail shoes")
        await service.start([V2])  # promote v2 --weight 100
        assert service.ready_spaces("acme", "shop") == [V2]
        assert service.complete_spaces("acme", "shop") == [V2, V1]  # v1 retained
        (row,) = service.indexes("acme")
        assert row["indexes"][V1]["complete"] is True
        assert 0 < row["indexes"][V1]["retained_s"] <= search_module.RETAIN_S
        assert service.pending() == {V2: 0}  # retained spaces are not pending work
        await service.start([V1, V2])  # rollback
        assert service.ready_spaces("acme", "shop") == [V1, V2]
        assert service.retained == {}
        assert await _search_ids(service, V1, "red trail shoes") == before
        assert embed.texts == {V1: len(_items()), V2: len(_items())}  # the upsert's only
        assert "retained_s" not in service.indexes("acme")[0]["indexes"][V1]
        await service.close()

    asyncio.run(run())


def test_past_the_retention_stored_vectors_come_back_at_once_page_by_page(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index was dropped: start reads v1's stored vectors at once (no backfill
    delay, nothing embedded), a page per store round trip; meanwhile searches answer
    from v2's complete index, never 503, and a pin to v1 says it is being built."""
    monkeypatch.setattr(search_module, "LOAD_PAGE", 2)

    async def run() -> None:
        embed = Embedder()
        store = SlowVectors(open_catalog_store(url))
        service = SearchService(
            store,  # type: ignore[arg-type]
            embed, 0.05, LOG, backfill_delay_s=3600, retain_s=0,
        )  # fmt: skip
        await service.start([V1, V2])
        await service.upsert("acme", "shop", _items())
        before = await _search_ids(service, V1, "green trail shoes")
        await service.start([V2])
        assert V1 not in service.catalogs[("acme", "shop")].spaces  # dropped
        store.release.clear()  # the reload takes a while
        calls = store.calls
        started = time.monotonic()
        await service.start([V1, V2])
        host = _host({"v1": 90, "v2": 10}, pick="v1")
        for _ in range(3):  # in between: v2 answers, whatever the split picks
            assert service.ready_spaces("acme", "shop") == [V2]
            assert _version(service, host) == "v2"
            await asyncio.sleep(0.05)
        with pytest.raises(Unavailable):
            _version(service, host, pinned="v1")
        store.release.set()
        while V1 not in service.ready_spaces("acme", "shop"):
            assert time.monotonic() - started < 5, "v1 not reloaded"
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 5  # not after the backfill's delay (an hour)
        assert store.calls - calls == len(_items()) // 2  # 6 items, pages of 2
        assert embed.texts == {V1: len(_items()), V2: len(_items())}  # nothing re-embedded
        assert _version(service, host) == "v1"
        assert await _search_ids(service, V1, "green trail shoes") == before
        await service.close()

    asyncio.run(run())


def test_the_promote_then_rollback_of_the_runbook_never_answers_503(url: str) -> None:
    """90/10 v1/v2 with a shadow on v3, `promote v3 --weight 100`, `rollback`: past
    the retention too, every search in between is answered (by v3, the shadow)."""

    async def run() -> None:
        store = SlowVectors(open_catalog_store(url))
        service = SearchService(
            store,  # type: ignore[arg-type]
            Embedder(), 0.05, LOG, backfill_delay_s=3600, retain_s=0,
        )  # fmt: skip
        await service.start([V1, V2, V3])
        await service.upsert("acme", "shop", _items())
        await service.start([V3])  # promote v3 --weight 100
        assert _version(service, _host({"v3": 100}, pick="v3")) == "v3"
        store.release.clear()
        await service.start([V1, V2, V3])  # rollback: 90/10 again, the shadow on v3
        for pick in ("v1", "v2"):
            assert _version(service, _host({"v1": 90, "v2": 10}, pick=pick)) == "v3"
        store.release.set()
        for _ in range(200):
            if service.ready_spaces("acme", "shop") == [V1, V2, V3]:
                break
            await asyncio.sleep(0.01)
        assert _version(service, _host({"v1": 90, "v2": 10}, pick="v2")) == "v2"
        await service.close()

    asyncio.run(run())


def test_a_retained_complete_index_answers_while_the_chosen_one_is_built(url: str) -> None:
    """v1 had all the traffic; v2, never indexed, gets it (`--allow-incomplete-index`):
    v1's retained index answers until v2's is complete, and with no complete index at
    all a search is a 503 `index_building`."""

    async def run() -> None:
        service = SearchService(
            open_catalog_store(url), Embedder(), 0.05, LOG, backfill_delay_s=3600
        )
        await service.start([V1])
        await service.upsert("acme", "shop", _items())
        await service.start([V2])  # v2's backfill waits an hour
        assert service.ready_spaces("acme", "shop") == []
        assert _version(service, _host({"v2": 100}, pick="v2")) == "v1"
        # Between the router's new weights and the spaces' (one reconfigure): the
        # split's pick is retained and complete, so it answers itself.
        assert _version(service, _host({"v1": 100}, pick="v1")) == "v1"
        await service.upsert("acme", "shop", [Item("i9", {"title": "new"}, {})])
        # v1's retained index lacks the new item: nothing complete is left
        with pytest.raises(ServekitError) as caught:
            _version(service, _host({"v2": 100}, pick="v2"))
        assert caught.value.code == "index_building"
        await service.close()

    asyncio.run(run())


def test_a_retained_index_loses_what_changed_and_its_return_embeds_only_that(
    url: str,
) -> None:
    """While retained, an item replaced elsewhere loses its vector there (never a stale
    one); when the version comes back, the backfill embeds that item alone."""

    async def run() -> None:
        embed = Embedder()
        service = SearchService(open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=3600)
        await service.start([V1, V2])
        await service.upsert("acme", "shop", _items())
        await service.start([V2])
        await service.upsert("acme", "shop", [Item("i0", {"title": "orange kayak"}, {})])
        assert service.complete_spaces("acme", "shop") == [V2]
        (row,) = service.indexes("acme")
        assert row["indexes"][V1]["vectors"] == len(_items()) - 1
        assert row["indexes"][V1]["complete"] is False
        await service.start([V1, V2])
        await service.backfill()  # what start schedules after its delay (an hour here)
        assert service.ready_spaces("acme", "shop") == [V1, V2]
        assert embed.texts[V1] == len(_items()) + 1  # the replaced item only
        assert (await _search_ids(service, V1, "orange kayak"))[0] == "i0"
        await service.close()

    asyncio.run(run())


def test_a_retained_index_is_dropped_when_its_time_is_up(url: str) -> None:
    async def run() -> None:
        service = SearchService(
            open_catalog_store(url), Embedder(), 0.02, LOG, backfill_delay_s=3600, retain_s=0.2
        )
        await service.start([V1, V2])
        await service.upsert("acme", "shop", _items())
        await service.start([V2])
        assert V1 in service.catalogs[("acme", "shop")].spaces
        for _ in range(100):  # the follower drops it
            if V1 not in service.catalogs[("acme", "shop")].spaces:
                break
            await asyncio.sleep(0.02)
        assert V1 not in service.catalogs[("acme", "shop")].spaces
        assert service.retained == {}
        assert service.complete_spaces("acme", "shop") == [V2]
        assert set(service.indexes("acme")[0]["indexes"]) == {V2}
        await service.close()

    asyncio.run(run())


def test_shards_retain_a_leaving_version_and_serve_it_back_at_once(url: str) -> None:
    async def run() -> None:
        shards = [
            SearchService(
                open_catalog_store(url), Embedder(), 0.05, LOG, backfill_delay_s=3600,
                owns=lambda item_id, n=n: shard_of(item_id, 2) == n,
            )
            for n in range(2)
        ]  # fmt: skip
        front = SearchService(
            open_catalog_store(url), Embedder(), 0.05, LOG, backfill_delay_s=3600,
            shards=ShardSet([InProcessShard(s) for s in shards], LOG),
        )  # fmt: skip
        await front.start([V1, V2])
        await front.upsert("acme", "shop", _items())
        for service in shards:
            await service.follow_once()
        await front.start([V2])
        assert front.ready_spaces("acme", "shop") == [V2]
        assert front.complete_spaces("acme", "shop") == [V2, V1]
        (row,) = front.indexes("acme")
        assert row["indexes"][V1]["vectors"] == len(_items())
        assert row["indexes"][V1]["complete"] is True
        assert row["indexes"][V1]["retained_s"] > 0
        assert _version(front, _host({"v1": 100}, pick="v1")) == "v1"  # before the sync
        await front.start([V1, V2])
        assert front.ready_spaces("acme", "shop") == [V1, V2]
        assert "retained_s" not in front.indexes("acme")[0]["indexes"][V1]
        for service in (front, *shards):
            await service.close()

    asyncio.run(run())


def test_a_shard_of_an_earlier_release_retains_nothing() -> None:
    """A shard whose status says nothing of retained spaces: none is used."""

    async def run() -> None:
        class Old(InProcessShard):
            async def sync(self, spaces: list[str]) -> dict[str, Any]:
                return {"seq": 1, "ready": {"acme\x00shop": spaces}}

        class New(InProcessShard):
            async def sync(self, spaces: list[str]) -> dict[str, Any]:
                return {"seq": 1, "ready": {"acme\x00shop": spaces}, "retained": {V1: 300},
                        "retained_ready": {"acme\x00shop": [V1]}}  # fmt: skip

        mixed = ShardSet([New(None), Old(None)], LOG)  # type: ignore[arg-type]
        await mixed.start([V2])
        assert mixed.complete_spaces("acme", "shop") == [V2]
        assert mixed.retained() == {}
        new = ShardSet([New(None), New(None)], LOG)  # type: ignore[arg-type]
        await new.start([V2])
        assert new.complete_spaces("acme", "shop") == [V2, V1]
        assert new.retained() == {V1: 300}
        await mixed.close()
        await new.close()

    asyncio.run(run())
