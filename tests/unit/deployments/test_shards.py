"""A catalog split over shards answers every search as the unsharded index does: the
same items, in the same order, with the same scores, vector-only and hybrid, with
filters; the ingress indexes nothing itself and waits for every shard's index."""

from __future__ import annotations

import asyncio
import random
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from deployments.errors import BadRequest
from deployments.pipelines import shards as shards_module
from deployments.pipelines.catalog_index import (
    ABSENT,
    Candidates,
    CatalogIndex,
    SearchQuery,
    query_terms,
)
from deployments.pipelines.search import SearchService
from deployments.pipelines.shards import Shard, ShardSet, StatsCache, shard_of
from deployments.pipelines.wiring import ShardCalls
from deployments.replicas.direct import (
    SHARD_METHODS,
    DirectPool,
    DirectServer,
    deployment_prefix,
)
from models.lexical import CorpusStats, LexicalIndex
from stores.catalog import Item
from stores.catalog_sql import open_catalog_store
from tests.unit.deployments.test_direct_calls import MemoryKV, _Handle
from tests.unit.deployments.test_search_service import LOG

SPACE = "m/v1"
WORDS = "red blue green trail road wool socks shoes jacket tent stove kettle lamp".split()


class InProcessShard:
    """A shard reached by plain calls (the deployment does the same over a handle)."""

    def __init__(self, service: SearchService) -> None:
        self.service = service

    async def sync(self, spaces: list[str]) -> dict[str, Any]:
        await self.service.start(spaces)
        return self.service.status()

    async def term_stats(self, tenant: str, catalog: str, text: str) -> CorpusStats | None:
        return self.service.term_stats(tenant, catalog, text)

    async def term_stats_at(
        self, tenant: str, catalog: str, text: str
    ) -> tuple[int, CorpusStats | None]:
        return self.service.term_stats_at(tenant, catalog, text)

    async def candidates(
        self, q: SearchQuery, stats: CorpusStats | None, generation: int | None = None
    ) -> Candidates | None:
        return self.service.candidates(q, stats, generation)

    async def close(self) -> None:
        """Nothing held here (the Ingress's `ShardCalls` closes its connections)."""


class ShardReplica:
    """What a `CatalogShard` replica serves, as it serves it (`term_stats` and
    `candidates` plain methods), for direct calls."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self.threads: set[str] = set()  # where the plain methods ran

    async def sync(self, spaces: list[str]) -> dict[str, Any]:
        await self.service.start(spaces)
        return self.service.status()

    def term_stats(self, tenant: str, catalog: str, text: str) -> CorpusStats | None:
        self.threads.add(threading.current_thread().name)
        return self.service.term_stats(tenant, catalog, text)

    def term_stats_at(self, tenant: str, catalog: str, text: str) -> tuple[int, CorpusStats | None]:
        return self.service.term_stats_at(tenant, catalog, text)

    def candidates(
        self, q: SearchQuery, stats: CorpusStats | None, generation: int | None = None
    ) -> Candidates | None:
        if q.k < 0:
            raise BadRequest("k: must be at least 1")
        return self.service.candidates(q, stats, generation)


class NoHandle:
    """Serve's handle where no call may reach it."""

    def __getattr__(self, method: str) -> Any:
        raise AssertionError(f"{method} went through the handle")


async def _direct_shards(
    services: list[SearchService],
) -> tuple[list[ShardCalls], list[DirectServer]]:
    """Each service behind a replica's direct server, reached by the Ingress's
    `ShardCalls` over real sockets (the handle never used)."""
    kv = MemoryKV()
    calls, servers = [], []
    for n, service in enumerate(services):
        prefix = deployment_prefix("servekit", f"CatalogShard-{n}")
        server = DirectServer(
            ShardReplica(service), prefix + "r1", "127.0.0.1", 256, kv=kv, methods=SHARD_METHODS
        )
        await server.start()
        pool = DirectPool(prefix, kv=kv)
        await pool.refresh()
        calls.append(ShardCalls(NoHandle(), pool))
        servers.append(server)
    return calls, servers


def _items(n: int) -> list[Item]:
    """Items whose scores do not tie: which of two equal scores makes a cut is
    arbitrary, in one index as across shards (slots break BM25's ties)."""
    rng = random.Random(7)
    vocab = WORDS + [f"w{i}" for i in range(300)]
    return [
        Item(
            f"sku-{i}",
            {
                "title": " ".join(rng.sample(WORDS, 3)),
                # a length of its own: no two BM25 scores tie
                "body": " ".join(rng.choices(vocab, k=5 + i)),
            },
            {"price": rng.randint(1, 100), "brand": rng.choice(["acme", "globex"])},
        )
        for i in range(n)
    ]


async def embed(tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
    """A vector per text, distinct for distinct texts."""
    out = np.stack(
        [np.random.default_rng(zlib.crc32(t.encode())).normal(size=32) for t in texts]
    ).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _one_and_two_shards(url: str) -> tuple[SearchService, list[SearchService]]:
    """One index of the store's catalogs, and the two shards of them."""
    one = SearchService(open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=0)
    shards = [
        SearchService(
            open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=0,
            owns=lambda item_id, n=n: shard_of(item_id, 2) == n,
        )
        for n in range(2)
    ]  # fmt: skip
    return one, shards


async def _caught_up(services: list[SearchService]) -> None:
    """Each service has followed the change log and its index of acme's shop is complete
    (a follower may see an item before the ingress stored its vector: its backfill then
    embeds it; compare complete indexes only)."""
    for service in services:
        await service.follow_once()
        for _ in range(200):
            if service.ready_spaces("acme", "shop") == [SPACE]:
                break
            await asyncio.sleep(0.05)
        assert service.ready_spaces("acme", "shop") == [SPACE]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


def test_items_spread_over_shards_stably() -> None:
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard_of(f"sku-{i}", 3)] += 1
    assert min(counts) > 900
    assert shard_of("sku-1", 3) == shard_of("sku-1", 3)


def test_bm25_over_shards_with_summed_stats_scores_as_one_index() -> None:
    docs = [" ".join(random.Random(i).choices(WORDS, k=10)) for i in range(300)]
    whole = LexicalIndex()
    whole.upsert(list(range(300)), docs)
    parts = [LexicalIndex(), LexicalIndex()]
    for p, part in enumerate(parts):
        keys = [i for i in range(300) if i % 2 == p]
        part.upsert(keys, [docs[i] for i in keys])
    query = "red trail shoes kettle"
    stats = parts[0].stats(query) + parts[1].stats(query)
    assert stats == whole.stats(query)
    merged = sorted(
        (hit for part in parts for hit in part.search(query, 300, stats=stats)),
        key=lambda h: (-h[1], h[0]),
    )
    expected = sorted(whole.search(query, 300), key=lambda h: (-h[1], h[0]))
    assert [k for k, _ in merged] == [k for k, _ in expected]
    assert np.allclose([s for _, s in merged], [s for _, s in expected])


def test_statistics_cache_sums_per_tenant_and_keeps_to_its_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = StatsCache(2)
    red = frozenset({"red"})
    cache.store("acme", "shop", 0, 11, CorpusStats(10, 50.0, {"red": 3}), red)
    assert cache.lookup("acme", "shop", red) is None  # shard 1 not known yet
    cache.store("acme", "shop", 1, ABSENT, None, red)  # no such catalog there
    assert cache.lookup("acme", "shop", red) == ([11, ABSENT], CorpusStats(10, 50.0, {"red": 3}))
    assert cache.lookup("globex", "shop", red) is None  # another tenant's: nothing
    assert cache.lookup("acme", "shop", frozenset({"red", "tent"})) is None  # a new term
    cache.store("acme", "shop", 1, 21, CorpusStats(5, 20.0, {}), red)  # now it holds some
    assert cache.lookup("acme", "shop", red) == ([11, 21], CorpusStats(15, 70.0, {"red": 3}))
    cache.store("acme", "shop", 0, 12, CorpusStats(11, 55.0, {"tent": 1}), frozenset({"tent"}))
    # a new generation drops what the shard said of other terms before
    assert cache.lookup("acme", "shop", red) is None
    assert cache.size == 2
    monkeypatch.setattr(shards_module, "CACHED_TERMS", 4)
    for n in range(3):  # each catalog: two terms on each shard
        terms = frozenset({f"a{n}", f"b{n}"})
        for shard in (0, 1):
            cache.store("acme", f"c{n}", shard, 5, CorpusStats(1, 1.0, {}), terms)
    assert cache.size <= 4
    assert cache.lookup("acme", "c2", frozenset({"a2", "b2"})) is not None  # the newest kept
    assert cache.lookup("acme", "shop", red) is None  # the oldest went first
    many = frozenset(f"t{n}" for n in range(5))  # one catalog's alone over the bound
    cache.store("acme", "big", 0, 5, CorpusStats(1, 1.0, {}), many)
    assert cache.lookup("acme", "big", many) is None
    assert cache.size <= 4
    monkeypatch.setattr(shards_module, "CACHED_TERMS", 1000)
    word = frozenset({"x" * 32_768})  # one long word takes its length's share
    before = cache.size
    cache.store("acme", "long", 0, 5, CorpusStats(1, 1.0, {}), word)
    assert cache.size == before + 1 + 32_768 // 64
    cache.store("acme", "long", 1, 5, CorpusStats(1, 1.0, {}), word)  # both: over the bound
    assert cache.lookup("acme", "long", word) is None
    assert cache.size == 0


def test_the_ingress_reads_a_query_as_the_shards_index_does() -> None:
    """The terms the ingress caches statistics of are those a catalog's BM25 index
    looks up (a term it left out would make every shard answer stale)."""
    index = CatalogIndex()
    texts = [
        "Café AB-1234 cordless drills", "the Runner's shoes, size 10.5", "USB-C cable 2m",
        "Ærø wool socks", "a an the of", "Über-light TENT for 2",
    ]  # fmt: skip
    index.upsert_many([Item(f"i{n}", {"title": t, "body": t}, {}) for n, t in enumerate(texts)])
    found = 0
    for text in [*texts, "drill cafe ab1234 runner usb cable wool tent"]:
        held = set(index.term_stats(text).df)
        assert held <= query_terms(text)
        found += bool(held)
    assert found == len(texts)  # all but the stop words


@pytest.mark.parametrize("transport", ["in_process", "direct"])
def test_two_shards_answer_as_one_index(url: str, transport: str) -> None:
    async def run() -> None:
        one, shards = _one_and_two_shards(url)
        servers: list[DirectServer] = []
        reach: list[Shard] = [InProcessShard(s) for s in shards]
        if transport == "direct":
            reach, servers = await _direct_shards(shards)  # type: ignore[assignment]
        front = SearchService(
            open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=0,
            shards=ShardSet(reach, LOG),
        )  # fmt: skip
        await one.start([SPACE])
        await front.start([SPACE])
        assert front.ready_spaces("acme", "shop") == [SPACE]
        await front.upsert("acme", "shop", _items(400))  # written through the ingress
        assert front.catalogs.get(("acme", "shop")) is None or not len(
            front.catalogs[("acme", "shop")]
        )  # the ingress holds no item
        await _caught_up([one, *shards])
        await front.shards.sync_once()  # type: ignore[union-attr]
        sizes = [len(s.catalogs[("acme", "shop")]) for s in shards]
        assert sum(sizes) == 400
        assert min(sizes) > 150
        assert front.ready_spaces("acme", "shop") == [SPACE]
        (row,) = front.indexes("acme")
        assert row["items"] == 400
        assert row["indexes"] == {SPACE: {"vectors": 400, "complete": True}}
        assert front.pending() == {SPACE: 0}
        assert front.indexes("globex") == []
        queries = ["red trail shoes", "wool socks", "kettle lamp tent", "blue jacket"]
        filters: list[dict[str, Any] | None] = [None, {"price": {"lte": 30}}, {"brand": "acme"}]
        for text in queries:
            vector: npt.NDArray[np.float32] = (await embed("", SPACE, [text]))[0]
            for hybrid in (False, True):
                for fusion in ("convex", "rrf"):
                    for f in filters:
                        want = one.search(
                            "acme", "shop", SPACE, vector, text, 10, f, hybrid, fusion
                        )
                        got = await front.query(
                            SearchQuery("acme", "shop", SPACE, vector, text, 10, f, hybrid, fusion)
                        )
                        assert [h.item.id for h in got.hits] == [h.item.id for h in want.hits]
                        assert np.allclose(
                            [h.score for h in got.hits], [h.score for h in want.hits], atol=1e-6
                        )
        # Each query's statistics were asked for once; every search went out once.
        assert front.shards.rounds == {"stats": 4, "candidates": 48, "stale": 0}  # type: ignore[union-attr]
        # Another tenant's catalog of that name: nothing, on every shard.
        vector = (await embed("", SPACE, ["red"]))[0]
        other = await front.query(
            SearchQuery("globex", "shop", SPACE, vector, "red", 5, None, True)
        )
        assert other.hits == []
        for server in servers:  # every search was answered over the connections
            assert server.served > 50
        for service in (one, front, *shards):
            await service.close()
        for server in servers:
            await server.close(1.0)

    asyncio.run(run())


class EarlierRelease(InProcessShard):
    """A shard of a release before cached statistics: its status does not say it
    checks their generation, and its `candidates` takes none."""

    async def sync(self, spaces: list[str]) -> dict[str, Any]:
        status = await super().sync(spaces)
        del status["stats_generations"]
        return status

    async def term_stats_at(self, *args: Any) -> Any:
        raise AssertionError("an earlier release has no term_stats_at")

    async def candidates(self, q: SearchQuery, stats: Any, *more: Any) -> Any:  # type: ignore[override]
        assert not more, "an earlier release takes no generation"
        return self.service.candidates(q, stats)


@pytest.mark.parametrize("release", ["current", "earlier"])
def test_cached_statistics_follow_every_write(url: str, release: str) -> None:
    """Hybrid searches over shards equal one index's as the catalog is created, grows,
    loses items and is written on one shard only: with the shards' statistics cached,
    a shard written to since answers stale and the search is scored anew."""

    async def run() -> None:
        one, shards = _one_and_two_shards(url)
        kind = InProcessShard if release == "current" else EarlierRelease
        front = SearchService(
            open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=0,
            shards=ShardSet([kind(s) for s in shards], LOG),
        )  # fmt: skip
        assert front.shards is not None
        rounds = front.shards.rounds
        await one.start([SPACE])
        await front.start([SPACE])

        async def settle() -> None:
            await _caught_up([one, *shards])
            await front.shards.sync_once()  # type: ignore[union-attr]

        async def same(text: str) -> int:
            vector: npt.NDArray[np.float32] = (await embed("", SPACE, [text]))[0]
            want = one.search("acme", "shop", SPACE, vector, text, 10, None, True, "convex")
            got = await front.query(
                SearchQuery("acme", "shop", SPACE, vector, text, 10, None, True)
            )
            assert [h.item.id for h in got.hits] == [h.item.id for h in want.hits]
            assert [h.score for h in got.hits] == pytest.approx([h.score for h in want.hits])
            return len(got.hits)

        items = _items(300)
        text = "red trail shoes"
        assert await same(text) == 0  # no such catalog on any shard yet
        await front.upsert("acme", "shop", items[:100])
        await settle()
        assert await same(text) == 10  # both shards hold it now
        assert await same(text) == 10
        await front.upsert("acme", "shop", items[100:])  # both shards written to
        await settle()
        assert await same(text) == 10
        one_shard = [i for i in items if shard_of(i.id, 2) == 0][:5]
        for item in one_shard:  # written on shard 0 only
            await front.delete("acme", "shop", item.id)
        await settle()
        assert await same(text) == 10
        await front.upsert(  # a word no item had, on shard 1 only
            "acme", "shop", [Item("sku-new4", {"title": "red trail zephyr"}, {})]
        )
        await settle()
        assert shard_of("sku-new4", 2) == 1
        assert await same("zephyr red") == 1 + 9
        assert await same("zephyr red") == 10
        if release == "earlier":
            assert rounds == {"stats": 7, "candidates": 7, "stale": 0}  # both, every time
        else:
            # The statistics asked for once per query; then one round per search, and
            # one more after each of the three writes before a search of cached terms
            # (the shards written to answered stale).
            assert rounds == {"stats": 2, "candidates": 10, "stale": 3}
        for service in (one, front, *shards):
            await service.close()

    asyncio.run(run())


def test_shard_calls_use_the_handle_until_a_direct_way_opens(url: str) -> None:
    async def run() -> None:
        kv, handle = MemoryKV(), _Handle()
        prefix = deployment_prefix("servekit", "CatalogShard-0")
        shard = ShardCalls(handle, DirectPool(prefix, kv=kv))
        await shard.sync([SPACE])  # no replica listed: through the handle
        assert handle.calls == [("sync", [SPACE])]
        service = SearchService(open_catalog_store(url), embed, 0.05, LOG)
        replica = ShardReplica(service)
        server = DirectServer(
            replica, prefix + "r1", "127.0.0.1", 256, kv=kv, methods=SHARD_METHODS
        )
        await server.start()
        await shard.direct.refresh()  # type: ignore[union-attr]
        status = await shard.sync([SPACE])
        assert status["seq"] == service.status()["seq"]
        assert len(handle.calls) == 1
        assert await shard.term_stats("acme", "shop", "red") is None  # no such catalog
        # A plain method ran in a thread, as Serve runs it, not on the event loop's.
        assert replica.threads
        assert threading.current_thread().name not in replica.threads
        vector = (await embed("", SPACE, ["red"]))[0]
        bad = SearchQuery("acme", "shop", SPACE, vector, "red", -1, None, False)
        with pytest.raises(BadRequest, match=r"^k: must be at least 1$"):
            await shard.candidates(bad, None)  # the shard's error, as itself
        assert server.served == 3
        assert server.answered == {"sync": 1, "term_stats": 1}  # the refused one is not
        assert len(handle.calls) == 1
        await shard.close()
        await service.close()
        await server.close(1.0)

    asyncio.run(run())


def test_a_version_is_ready_only_when_every_shard_is() -> None:
    async def run() -> None:
        class Slow(InProcessShard):
            async def sync(self, spaces: list[str]) -> dict[str, Any]:
                return {"seq": 3, "ready": {"acme\x00shop": []}}

        class Fine(InProcessShard):
            async def sync(self, spaces: list[str]) -> dict[str, Any]:
                return {"seq": 5, "ready": {"acme\x00shop": spaces}}

        shards = ShardSet([Fine(None), Slow(None)], LOG)  # type: ignore[arg-type]
        assert shards.ready_spaces("acme", "shop") == []  # never synced
        await shards.start([SPACE])
        assert shards.ready_spaces("acme", "shop") == []
        assert shards.ready_spaces("acme", "other") == [SPACE]  # no shard holds it yet
        assert shards.seq == 3
        await shards.close()

    asyncio.run(run())
