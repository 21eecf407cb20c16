"""Where events' features read item attributes: the replica's index, or on the ingress
of sharded catalogs (which indexes nothing) the catalog store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from deployments.pipelines.features_wiring import catalog_items
from deployments.pipelines.search import SearchService
from deployments.pipelines.shards import ShardSet
from stores.catalog import Item
from stores.catalog_sql import open_catalog_store
from tests.unit.deployments.test_search_service import LOG
from tests.unit.deployments.test_shards import SPACE, embed


def test_a_sharded_ingress_reads_attributes_from_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"

    async def run() -> None:
        front = SearchService(
            open_catalog_store(url), embed, 0.05, LOG, backfill_delay_s=0,
            shards=ShardSet([], LOG),
        )  # fmt: skip
        await front.start([SPACE])
        items = [
            Item("boot", {"title": "trail boot", "brand": "acme"}, {"category": "shoes"}),
            Item("sock", {"title": "wool sock"}, {"category": "socks", "price": 9.5}),
        ]
        await front.upsert("acme", "shop", items)
        assert not front.catalogs.get(("acme", "shop"))  # the shards hold the items
        lookup = catalog_items(front)
        assert lookup is not None
        found = await lookup("acme", "shop", ["boot", "sock", "boot", "absent"])
        assert found["boot"]["category"] == "shoes"
        assert found["boot"]["brand"] == "acme"  # a text field where no attribute is
        assert found["sock"]["price"] == 9.5
        assert "absent" not in found
        assert await lookup("globex", "shop", ["boot"]) == {}  # another tenant's: nothing
        await front.close()

    asyncio.run(run())
