"""The search service over a real catalog store: two services on one store stand for two
replicas (one writes, the other follows the change log), with a deterministic embedder."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from deployments.pipelines.search import SearchService
from stores.catalog import Item
from stores.catalog_sql import open_catalog_store

DIM = 32
LOG = logging.getLogger("test.search")


def _embedder(space: str) -> npt.NDArray[np.float32]:
    return np.frombuffer(hashlib.sha256(space.encode()).digest()[:DIM], dtype=np.uint8)


async def fake_embed(space: str, texts: list[str]) -> npt.NDArray[np.float32]:
    """Bag of words hashed into DIM buckets, rotated per space: the same text gets a
    different vector in each space, as two model versions would give."""
    shift = int(_embedder(space)[0]) % DIM
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().replace(".", " ").split():
            out[row, (int(hashlib.md5(word.encode()).hexdigest(), 16) + shift) % DIM] += 1
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    return out


async def embed_items(tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
    """What the service calls for items: with the catalog's tenant, which the vectors
    do not depend on."""
    return await fake_embed(space, texts)


def _items() -> list[Item]:
    return [
        Item(f"i{n}", {"title": f"{color} {kind}", "sku": f"SKU-{n:04d}"},
             {"category": kind.split()[-1], "price": 10 + n})
        for n, (color, kind) in enumerate(
            (c, k) for c in ("red", "blue", "green") for k in ("trail shoes", "wool socks")
        )
    ]  # fmt: skip


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


def _service(url: str) -> SearchService:
    return SearchService(open_catalog_store(url), embed_items, 0.05, LOG, backfill_delay_s=0)


def test_a_second_replica_follows_upserts_and_deletes(url: str) -> None:
    async def run() -> None:
        writer, follower = _service(url), _service(url)
        spaces = ["m/v1", "m/v2"]
        await writer.start(spaces)
        await follower.start(spaces)
        await writer.upsert("acme", "shop", _items())
        q = (await fake_embed("m/v2", ["red trail shoes"]))[0]
        mine = writer.search("acme", "shop", "m/v2", q, "red trail shoes", 3, None, False)
        assert mine.hits[0].item.id == "i0"
        head = writer.store.head()
        for _ in range(100):  # the follower's poll
            if follower.seq >= head:
                break
            await asyncio.sleep(0.05)
        theirs = follower.search("acme", "shop", "m/v2", q, "red trail shoes", 3, None, False)
        assert [h.item.id for h in theirs.hits] == [h.item.id for h in mine.hits]
        assert follower.ready_spaces("acme", "shop") == spaces
        await writer.delete("acme", "shop", "i0")
        head = writer.store.head()
        for _ in range(100):
            if follower.seq >= head:
                break
            await asyncio.sleep(0.05)
        gone = follower.search("acme", "shop", "m/v2", q, "red trail shoes", 6, None, False)
        assert "i0" not in [h.item.id for h in gone.hits]
        # Another tenant's catalog of the same name is empty.
        assert follower.search("globex", "shop", "m/v2", q, "x", 3, None, False).hits == []
        await writer.close()
        await follower.close()

    asyncio.run(run())


def test_catalog_settings_reach_a_second_replica_in_order(url: str) -> None:
    async def run() -> None:
        writer, follower = _service(url), _service(url)
        await writer.start(["m/v1"])
        await follower.start(["m/v1"])
        await writer.upsert("acme", "shop", _items())
        await writer.configure("acme", "shop", {"hybrid": False})
        await writer.delete("acme", "shop", "i1")
        await writer.configure("globex", "shop", {"hybrid": True})  # same name, other tenant
        assert writer.catalog_settings("acme", "shop") == {"hybrid": False}
        head = writer.store.head()
        for _ in range(100):
            if follower.seq >= head:
                break
            await asyncio.sleep(0.05)
        assert follower.catalog_settings("acme", "shop") == {"hybrid": False}
        assert follower.catalog_settings("globex", "shop") == {"hybrid": True}
        assert follower.catalog_settings("acme", "other") == {}
        assert follower.catalogs["acme", "shop"].get("i1") is None
        assert len(follower.catalogs["acme", "shop"]) == len(_items()) - 1
        await writer.close()
        await follower.close()

    asyncio.run(run())


def test_a_page_read_before_a_local_write_never_lands_after_it(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica's follower holds a change-log page with a catalog's old settings while
    the same replica writes new ones: the new settings are what it holds after both."""

    async def run() -> None:
        service = _service(url)  # not started: this test drives its follower
        await service.configure("acme", "shop", {"hybrid": False})  # in the log
        read, release = threading.Event(), threading.Event()
        changes = service.store.changes

        def held_changes(after: int, limit: int) -> list[Any]:
            page = changes(after, limit)
            read.set()
            release.wait(5)
            return page

        monkeypatch.setattr(service.store, "changes", held_changes)
        follow = asyncio.create_task(service.follow_once())
        await asyncio.to_thread(read.wait, 5)  # the follower holds the old settings
        write = asyncio.create_task(service.configure("acme", "shop", {}))
        await asyncio.sleep(0.1)  # the write goes as far as it can
        release.set()
        await asyncio.gather(follow, write)
        assert service.catalog_settings("acme", "shop") == {}
        await service.close()

    asyncio.run(run())


def test_each_space_answers_with_its_own_vectors(url: str) -> None:
    async def run() -> None:
        service = _service(url)
        await service.start(["m/v1", "m/v2"])
        await service.upsert("acme", "shop", _items())
        for space in ("m/v1", "m/v2"):
            q = (await fake_embed(space, ["blue wool socks"]))[0]
            hits = service.search("acme", "shop", space, q, "blue wool socks", 1, None, False)
            assert hits.hits[0].item.id == "i3"
            assert hits.space == space
        await service.close()

    asyncio.run(run())


def test_filters_hybrid_and_sku(url: str) -> None:
    async def run() -> None:
        service = _service(url)
        await service.start(["m/v1"])
        await service.upsert("acme", "shop", _items())
        q = (await fake_embed("m/v1", ["shoes"]))[0]
        socks = service.search("acme", "shop", "m/v1", q, "shoes", 5, {"category": "socks"}, False)
        assert {h.item.attributes["category"] for h in socks.hits} == {"socks"}
        assert len(socks.hits) == 3
        sku = service.search("acme", "shop", "m/v1", q, "SKU-0004", 3, None, True)
        assert sku.hits[0].item.id == "i4"
        await service.close()

    asyncio.run(run())


def test_a_new_space_is_backfilled_and_a_retired_one_dropped(url: str) -> None:
    async def run() -> None:
        service = SearchService(
            open_catalog_store(url), embed_items, 0.05, LOG, backfill_delay_s=0, retain_s=0
        )
        await service.start(["m/v1"])
        await service.upsert("acme", "shop", _items())
        await service.start(["m/v1", "m/v3"])
        await service.backfill()
        assert service.ready_spaces("acme", "shop") == ["m/v1", "m/v3"]
        q = (await fake_embed("m/v3", ["green trail shoes"]))[0]
        hits = service.search("acme", "shop", "m/v3", q, "green trail shoes", 1, None, False)
        assert hits.hits[0].item.id == "i4"
        await service.start(["m/v3"])
        assert "m/v1" not in service.catalogs[("acme", "shop")].spaces
        await service.close()

    asyncio.run(run())


def test_an_upsert_survives_a_failing_space(url: str) -> None:
    async def flaky(tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
        if space == "m/canary":
            raise RuntimeError("canary down")
        return await fake_embed(space, texts)

    async def run() -> None:
        service = SearchService(open_catalog_store(url), flaky, 0.05, LOG, backfill_delay_s=0)
        await service.start(["m/v1", "m/canary"])
        await service.upsert("acme", "shop", _items())
        assert service.ready_spaces("acme", "shop") == ["m/v1"]
        await service.close()

    asyncio.run(run())


def test_items_are_embedded_as_their_catalogs_tenant(url: str) -> None:
    seen: set[tuple[str, str]] = set()

    async def embed(tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
        seen.add((tenant, space))
        return await fake_embed(space, texts)

    async def run() -> None:
        service = SearchService(open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=0)
        await service.start(["m/v1"])
        await service.upsert("acme", "shop", _items()[:2])  # embedded on upsert
        await service.upsert("globex", "shop", _items()[2:4])
        await service.start(["m/v1", "m/v2"])
        await service.backfill()  # and when a new space is backfilled
        assert service.ready_spaces("globex", "shop") == ["m/v1", "m/v2"]
        await service.close()

    asyncio.run(run())
    assert seen == {(t, s) for t in ("acme", "globex") for s in ("m/v1", "m/v2")}


def test_a_stored_item_no_replica_can_index_is_logged_and_left_out(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An item stored before such values were refused (or by another writer) neither
    stops a replica's start nor keeps the catalog's other items from search."""
    store = open_catalog_store(url)
    store.upsert("acme", "shop", [_items()[0]])
    monkeypatch.setattr("stores.catalog_sql._checked", lambda item: item)
    poison = Item("i0", {"title": "x"}, {"n": 10**400})
    store.upsert("acme", "shop", [poison, *_items()[1:]])
    monkeypatch.undo()

    async def run() -> None:
        service = _service(url)
        with caplog.at_level(logging.ERROR, logger=LOG.name):
            await service.start(["m/v1"])
        assert service.seq == store.head()
        index = service.catalogs["acme", "shop"]
        assert index.get("i0") is None
        assert len(index) == len(_items()) - 1
        await service.backfill()
        assert service.ready_spaces("acme", "shop") == ["m/v1"]
        assert {r.getMessage() for r in caplog.records} == {"catalog item not indexed"}
        await service.close()

    asyncio.run(run())


class _Hooked:
    """A catalog store that runs `hook` once, right after an upsert (or with
    `on_delete`, a delete) commits."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.hook: Any = None
        self.on_delete: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def upsert(self, *args: Any) -> int:
        seq: int = self.store.upsert(*args)
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return seq

    def delete(self, *args: Any) -> int | None:
        seq: int | None = self.store.delete(*args)
        if self.on_delete is not None:
            hook, self.on_delete = self.on_delete, None
            hook()
        return seq


def test_a_follower_that_reads_an_upsert_at_once_reads_its_vectors(url: str) -> None:
    """Another replica that polls the change log the moment an upsert commits finds
    the item's vectors with it: it can search the item without embedding it."""

    async def run() -> None:
        hooked = _Hooked(open_catalog_store(url))
        writer = SearchService(hooked, embed_items, 3600, LOG, backfill_delay_s=3600)  # type: ignore[arg-type]
        follower = SearchService(
            open_catalog_store(url), embed_items, 3600, LOG, backfill_delay_s=3600
        )
        await writer.start(["m/v1"])
        await follower.start(["m/v1"])
        loop = asyncio.get_running_loop()
        hooked.hook = lambda: asyncio.run_coroutine_threadsafe(follower.follow_once(), loop).result(
            5
        )
        await writer.upsert("acme", "shop", _items())
        assert follower.seq == writer.store.head()
        assert follower.ready_spaces("acme", "shop") == ["m/v1"]
        assert follower.pending() == {"m/v1": 0}
        await writer.close()
        await follower.close()

    asyncio.run(run())


def test_a_follower_backfills_an_item_stored_without_a_vector(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item whose writer stored no vector in a space (its embedding failed there)
    is embedded by each follower's backfill: the follower's index becomes complete."""
    monkeypatch.setattr("deployments.pipelines.search.BACKFILL_RETRY_S", 0.0)

    async def run() -> None:
        follower = _service(url)
        await follower.start(["m/v1"])
        await asyncio.sleep(0.1)  # the start's backfill: nothing to embed yet
        head = follower.store.upsert("acme", "shop", _items())  # items, no vectors
        for _ in range(100):
            if follower.seq >= head and follower.pending() == {"m/v1": 0}:
                break
            await asyncio.sleep(0.05)
        assert len(follower.catalogs["acme", "shop"]) == len(_items())
        assert follower.ready_spaces("acme", "shop") == ["m/v1"]
        await follower.close()

    asyncio.run(run())


class _Meanwhile:
    """A store hook that starts `work` on the loop and gives it time to run as far as
    it can while the store call that ran the hook has committed but not returned."""

    def __init__(self, loop: asyncio.AbstractEventLoop, work: Any) -> None:
        self.loop, self.work = loop, work
        self.done: Any = None

    def __call__(self) -> None:
        self.done = asyncio.run_coroutine_threadsafe(self.work(), self.loop)
        time.sleep(0.3)


def test_a_delete_after_an_upsert_is_not_undone_by_the_upserts_apply(url: str) -> None:
    """A delete (and the follower's poll) that commit while an upsert of the same item
    is between its store write and its local apply: the item stays deleted here."""

    async def run() -> None:
        hooked = _Hooked(open_catalog_store(url))
        service = SearchService(hooked, embed_items, 3600, LOG, backfill_delay_s=3600)  # type: ignore[arg-type]
        await service.start(["m/v1"])

        async def delete() -> None:
            await service.delete("acme", "shop", "i0")
            await service.follow_once()

        hooked.hook = meanwhile = _Meanwhile(asyncio.get_running_loop(), delete)
        await service.upsert("acme", "shop", _items())
        await asyncio.wrap_future(meanwhile.done)
        await service.follow_once()
        assert service.store.get("acme", "shop", "i0") is None
        assert service.catalogs["acme", "shop"].get("i0") is None
        await service.close()

    asyncio.run(run())


def test_an_upsert_after_a_delete_is_not_undone_by_the_deletes_apply(url: str) -> None:
    async def run() -> None:
        hooked = _Hooked(open_catalog_store(url))
        service = SearchService(hooked, embed_items, 3600, LOG, backfill_delay_s=3600)  # type: ignore[arg-type]
        await service.start(["m/v1"])
        await service.upsert("acme", "shop", _items())

        async def upsert() -> None:
            await service.upsert("acme", "shop", [_items()[0]])

        hooked.on_delete = meanwhile = _Meanwhile(asyncio.get_running_loop(), upsert)
        await service.delete("acme", "shop", "i0")
        await asyncio.wrap_future(meanwhile.done)
        assert service.store.get("acme", "shop", "i0") is not None
        assert service.catalogs["acme", "shop"].get("i0") is not None
        await service.close()

    asyncio.run(run())


def test_a_backfill_keeps_no_vector_of_a_text_replaced_while_it_embedded(url: str) -> None:
    """An item upserted again while a backfill embeds its old text: the store and the
    index end with the new text's vector in the backfilled space."""
    service: SearchService

    async def embed(tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
        if space == "m/v2" and "red trail shoes. SKU-0000" in texts:
            await service.upsert("acme", "shop", [Item("i0", {"title": "orange hat"})])
        return await fake_embed(space, texts)

    async def run() -> None:
        nonlocal service
        service = SearchService(open_catalog_store(url), embed, 3600, LOG, backfill_delay_s=3600)
        await service.start(["m/v1"])
        await service.upsert("acme", "shop", _items())
        await service.start(["m/v1", "m/v2"])
        await service.backfill()
        new = (await fake_embed("m/v2", ["orange hat"]))[0]
        stored = service.store.get_vectors("acme", "shop", "m/v2", ["i0"])["i0"]
        assert np.allclose(np.frombuffer(stored, dtype=np.float32), new)
        assert np.allclose(service.catalogs["acme", "shop"].vectors_of("m/v2", ["i0"])[0], new)
        assert service.ready_spaces("acme", "shop") == ["m/v1", "m/v2"]
        await service.close()

    asyncio.run(run())


def test_an_attribute_from_1_to_true_reaches_a_follower(url: str) -> None:
    async def run() -> None:
        writer, follower = _service(url), _service(url)
        await writer.start(["m/v1"])
        await follower.start(["m/v1"])
        await writer.upsert("acme", "shop", [Item("x", {"title": "a"}, {"flag": 1})])
        await follower.follow_once()
        await writer.upsert("acme", "shop", [Item("x", {"title": "a"}, {"flag": True})])
        await follower.follow_once()
        got = follower.catalogs["acme", "shop"].get("x")
        assert got is not None
        assert type(got.attributes["flag"]) is bool
        matching = follower.catalogs["acme", "shop"].matching(None, {"flag": True}, 5)
        assert [i.id for i in matching] == ["x"]
        await writer.close()
        await follower.close()

    asyncio.run(run())


def test_a_space_that_leaves_reports_no_pending_items(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending-items gauge of a version that left with its index incomplete goes
    to 0 (the gauge keeper kept re-reporting its last count, and the index-behind alert
    fired for good on a healthy service)."""
    import deployments.pipelines.search as search_module

    monkeypatch.setattr(search_module, "PROGRESS_EVERY_S", 0.0)
    reported: dict[str, int] = {}

    async def run() -> None:
        writer = _service(url)
        await writer.start(["m/v1"])
        await writer.upsert("acme", "shop", _items())
        never = asyncio.Event()

        async def stuck(tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
            await never.wait()  # m/v2's backfill never ends
            raise AssertionError

        service = SearchService(
            open_catalog_store(url), stuck, 0.02, LOG, backfill_delay_s=0,
            progress=lambda space, n: reported.__setitem__(space, n),
        )  # fmt: skip
        await service.start(["m/v1", "m/v2"])
        for _ in range(100):
            if reported.get("m/v2"):
                break
            await asyncio.sleep(0.02)
        assert reported["m/v2"] == len(_items())
        await service.start(["m/v1"])  # v2 leaves, its index incomplete
        for _ in range(100):
            if reported["m/v2"] == 0:
                break
            await asyncio.sleep(0.02)
        assert reported["m/v2"] == 0
        await service.close()
        await writer.close()

    asyncio.run(run())


def test_a_followers_complete_index_stays_complete_while_it_follows_writes(url: str) -> None:
    """Another replica's upserts reach a follower as items and their stored vectors in
    one write: its index of a kept space never reads incomplete in between (it did on
    about 6 % of polls, and searches and recommendations of that version then answered
    503 `index_building` although the version was fully built)."""

    async def run() -> None:
        writer, follower = _service(url), _service(url)
        await writer.start(["m/v1"])
        await writer.upsert("acme", "shop", _items())
        await follower.start(["m/v1"])
        assert follower.ready_spaces("acme", "shop") == ["m/v1"]
        polls, incomplete = 0, 0
        done = False

        async def poll() -> None:
            nonlocal polls, incomplete
            while not done:
                polls += 1
                incomplete += follower.ready_spaces("acme", "shop") != ["m/v1"]
                await asyncio.sleep(0)

        poller = asyncio.create_task(poll())
        for batch in range(30):
            items = [Item(f"n{batch}-{n}", {"title": f"new item {batch} {n}"}) for n in range(20)]
            await writer.upsert("acme", "shop", items)
            await asyncio.sleep(0.01)
        head = writer.store.head()
        for _ in range(300):
            if follower.seq >= head:
                break
            await asyncio.sleep(0.02)
        done = True
        await poller
        assert follower.seq >= head
        assert len(follower.catalogs[("acme", "shop")]) == len(_items()) + 600
        assert polls > 100
        assert incomplete == 0, f"incomplete on {incomplete} of {polls} polls"
        await writer.close()
        await follower.close()

    asyncio.run(run())


def test_a_tenants_catalogs_are_found_without_reading_everyone_s(tmp_path: Path) -> None:
    """A request naming no catalog (events, recommendations) takes the tenant's only one:
    each such request scanned every tenant's catalogs."""
    from deployments.pipelines.catalog_index import CatalogIndex

    service = _service(f"sqlite:///{tmp_path / 'catalog.db'}")
    assert service.catalogs_of("acme") == []
    for key in [("acme", "shop"), ("globex", "b"), ("globex", "a")]:
        service.catalogs[key] = CatalogIndex()
    assert service.catalogs_of("globex") == ["a", "b"]
    assert service.catalogs_of("acme") == ["shop"]
    service.catalogs["acme", "outlet"] = CatalogIndex()  # a follower adds one
    assert service.catalogs_of("acme") == ["outlet", "shop"]
    assert service.catalogs_of("initech") == []
