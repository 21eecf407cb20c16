"""A replica that starts from a catalog snapshot: it seeds a store that lacks the
catalog, uses the snapshot's vectors only when they come from the configured artifact,
and converges on the store (the truth) whatever the snapshot holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from deployments.pipelines.search import SearchService
from models.catalog_snapshot import CatalogSnapshot, read_snapshot, write_snapshot
from stores.catalog import Item, item_text
from stores.catalog_sql import open_catalog_store
from tests.unit.deployments.test_search_service import LOG, _items, fake_embed

SHA = "ab" * 32
SPACE = "m/v1"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture
def snapshot(tmp_path: Path) -> Callable[[], CatalogSnapshot]:
    items = _items()
    vectors = asyncio.run(fake_embed(SPACE, [item_text(i) for i in items]))
    path = tmp_path / "shop.index"
    write_snapshot(path, items, {SPACE: (SHA, vectors)}, threads=1)
    return lambda: read_snapshot(path)


class Counting:
    """The item embedder, counting the texts it embeds."""

    def __init__(self) -> None:
        self.texts = 0

    async def __call__(self, tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
        self.texts += len(texts)
        return await fake_embed(space, texts)


def _service(
    url: str, load: Callable[[], CatalogSnapshot], embed: Counting, sha: str = SHA
) -> SearchService:
    return SearchService(
        open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=0,
        snapshots=[("acme", "shop", load)], space_artifacts={SPACE: sha},
    )  # fmt: skip


async def _top(service: SearchService, text: str, k: int = 1) -> list[str]:
    q = (await fake_embed(SPACE, [text]))[0]
    return [h.item.id for h in service.search("acme", "shop", SPACE, q, text, k, None, False).hits]


def test_a_replica_starts_from_a_snapshot_and_seeds_the_store(
    url: str, snapshot: Callable[[], CatalogSnapshot]
) -> None:
    async def run() -> None:
        embed = Counting()
        first = _service(url, snapshot, embed)
        await first.start([SPACE])
        assert embed.texts == 0  # vectors from the snapshot, none embedded
        assert first.ready_spaces("acme", "shop") == [SPACE]
        assert await _top(first, "green trail shoes") == ["i4"]
        store = first.store
        head = store.head()
        assert head == len(_items())
        named = first.stored_space(SPACE)
        assert named == f"{SPACE}@{SHA[:12]}"
        assert len(store.get_vectors("acme", "shop", named, [i.id for i in _items()])) == 6
        second = _service(url, snapshot, embed)  # another replica: nothing seeded twice
        await second.start([SPACE])
        assert store.head() == head
        assert await _top(second, "green trail shoes", 6) == await _top(
            first, "green trail shoes", 6
        )
        assert embed.texts == 0
        # Not another tenant's.
        assert second.search("globex", "shop", SPACE, None, "green", 3, None, True).hits == []
        await first.close()
        await second.close()

    asyncio.run(run())


def test_changes_made_after_the_snapshot_are_replayed(
    url: str, snapshot: Callable[[], CatalogSnapshot]
) -> None:
    async def run() -> None:
        embed = Counting()
        writer = _service(url, snapshot, embed)
        await writer.start([SPACE])
        await writer.upsert("acme", "shop", [Item("i0", {"title": "purple rain boots"})])
        await writer.delete("acme", "shop", "i1")
        written = embed.texts
        late = _service(url, snapshot, embed)  # a replica started after those changes
        await late.start([SPACE])
        assert embed.texts == written  # the changed item's vector came from the store
        assert await _top(late, "purple rain boots") == ["i0"]
        assert "i1" not in await _top(late, "blue wool socks", 6)
        changed = late.catalogs[("acme", "shop")].get("i0")
        assert changed is not None
        assert changed.text == {"title": "purple rain boots"}
        await writer.close()
        await late.close()

    asyncio.run(run())


def test_a_catalog_the_store_has_otherwise_is_the_stores(
    url: str, snapshot: Callable[[], CatalogSnapshot]
) -> None:
    async def run() -> None:
        store = open_catalog_store(url)
        store.upsert("acme", "shop", [Item("i5", {"title": "orange hat"})])
        embed = Counting()
        service = _service(url, snapshot, embed)
        await service.start([SPACE])
        index = service.catalogs[("acme", "shop")]
        assert sorted(index.slots) == ["i5"]  # snapshot items the store lacks are dropped
        assert index.items[index.slots["i5"]].text == {"title": "orange hat"}
        for _ in range(200):
            if service.ready_spaces("acme", "shop"):
                break
            await asyncio.sleep(0.02)
        assert await _top(service, "orange hat") == ["i5"]
        await service.close()

    asyncio.run(run())


def test_vectors_of_another_artifact_are_not_used(
    url: str, snapshot: Callable[[], CatalogSnapshot]
) -> None:
    async def run() -> None:
        embed = Counting()
        service = _service(url, snapshot, embed, sha="cd" * 32)
        await service.start([SPACE])
        assert len(service.catalogs[("acme", "shop")]) == 6  # the items still seed
        assert service.ready_spaces("acme", "shop") == []
        for _ in range(200):  # the backfill start() began
            if service.ready_spaces("acme", "shop"):
                break
            await asyncio.sleep(0.02)
        assert service.ready_spaces("acme", "shop") == [SPACE]
        assert embed.texts == 6
        await service.close()

    asyncio.run(run())


async def _ready(service: SearchService) -> None:
    for _ in range(200):  # the backfill start() began
        if service.ready_spaces("acme", "shop"):
            break
        await asyncio.sleep(0.02)
    assert service.ready_spaces("acme", "shop") == [SPACE]


def test_stored_vectors_of_another_artifact_are_not_read(
    url: str, snapshot: Callable[[], CatalogSnapshot]
) -> None:
    """The version's artifact was rebuilt under the same name (the store holds the old
    one's vectors, the snapshot too): a replica of the new one embeds the catalog again
    instead of indexing the old vectors beside its queries; one of the old artifact
    still finds the old vectors, none embedded."""

    async def run() -> None:
        old = _service(url, snapshot, Counting())
        await old.start([SPACE])  # seeds the store with the old artifact's vectors
        await old.close()
        embed = Counting()
        new = _service(url, snapshot, embed, sha="cd" * 32)
        await new.start([SPACE])
        await _ready(new)
        assert embed.texts == 6  # every item embedded by the new artifact
        await new.close()
        again = Counting()
        later = _service(url, snapshot, again, sha="cd" * 32)  # its vectors are stored now
        await later.start([SPACE])
        await _ready(later)
        assert again.texts == 0  # the backfill found them all stored
        await later.close()

    asyncio.run(run())


def test_a_snapshot_that_cannot_be_read_is_skipped(url: str) -> None:
    def broken() -> CatalogSnapshot:
        raise OSError("no such file")

    async def run() -> None:
        store = open_catalog_store(url)
        store.upsert("acme", "shop", [Item("i5", {"title": "orange hat"})])
        service = _service(url, broken, Counting())
        await service.start([SPACE])
        assert sorted(service.catalogs[("acme", "shop")].slots) == ["i5"]
        await service.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Item("i9", {"title": "x"}, {"color": None}), "items.6.attributes.color"),  # type: ignore[dict-item]
        (Item("i9", {"title": "x"}, {"size": float("nan")}), "items.6.attributes.size"),
        (Item("i9", {"title": "x"}, {"n": 2**64}), "items.6.attributes.n"),
        (Item("", {"title": "x"}), "items.6.id"),
        (Item("..", {"title": "x"}), "items.6.id"),
        (Item("i9", {}), "items.6.text"),
    ],
)
def test_a_snapshot_with_an_item_the_api_refuses_is_logged_and_skipped(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: Item, field: str
) -> None:
    """Such an item would fail the index build or the seeding: the replica starts
    without the snapshot, from the store."""
    items = [*_items(), bad]
    vectors = asyncio.run(fake_embed(SPACE, [item_text(i) or "x" for i in items]))
    path = tmp_path / "bad.index"
    write_snapshot(path, items, {SPACE: (SHA, vectors)}, threads=1)

    async def run() -> None:
        store = open_catalog_store(url)
        store.upsert("acme", "shop", [Item("i5", {"title": "orange hat"})])
        service = _service(url, lambda: read_snapshot(path), Counting())
        await service.start([SPACE])
        assert sorted(service.catalogs[("acme", "shop")].slots) == ["i5"]
        await service.close()

    asyncio.run(run())
    (record,) = [r for r in caplog.records if r.getMessage() == "catalog snapshot not loaded"]
    assert record.fields["detail"].startswith(f"{field}: ")  # type: ignore[attr-defined]


def test_a_snapshot_that_cannot_seed_the_store_is_skipped(
    url: str, snapshot: Callable[[], CatalogSnapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        service = _service(url, snapshot, Counting())

        def down(*args: object) -> None:
            raise OSError("the database is down")

        monkeypatch.setattr(service.store, "seed", down)
        await service.start([SPACE])
        assert ("acme", "shop") not in service.catalogs  # the store has nothing: no catalog
        await service.close()

    asyncio.run(run())
