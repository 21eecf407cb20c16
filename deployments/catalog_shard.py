"""A catalog shard: one deployment per shard (`CatalogShard-<n>`), each holding the items
whose id hashes to it, of every catalog, followed from the store's change log.

It runs no model: the ingress embeds queries and upserts, and stores the vectors with
the items; a shard reads them from the store. A version added later is backfilled
here through the ingress (`Ingress.embed_for_index`), which has the models.

The ingress calls a shard directly (`deployments/replicas/direct.py`, with
`args.dedicated_calls: direct`, the default), through Serve's handle otherwise or
whenever that way is not open.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import numpy as np
import numpy.typing as npt
from ray import serve

from configs.schema import INGRESS_DEPLOYMENT, AppArgs
from configs.settings import tune_interpreter
from deployments.observability.logs import get_logger
from deployments.pipelines.catalog_index import Candidates, SearchQuery
from deployments.pipelines.search import SearchService
from deployments.pipelines.shards import shard_of
from deployments.pipelines.wiring import space_artifacts
from deployments.replicas.direct import SHARD_METHODS, DirectCallee
from deployments.tenancy.access import registry_url
from models.lexical import CorpusStats
from stores.secrets import load_secrets


class CatalogShard(DirectCallee):
    """Shard `shard` of `shards`: a search service over its part of every catalog."""

    def __init__(self, args: dict[str, Any], shard: int, shards: int) -> None:
        from stores.catalog_sql import open_catalog_store

        tune_interpreter()
        self.args = AppArgs.model_validate(args)
        self.shard, self.shards = shard, shards
        store = open_catalog_store(registry_url(load_secrets()))
        self.service = SearchService(
            store,
            self._embed,
            self.args.search.follow_s,
            get_logger("search"),
            owns=lambda item_id: shard_of(item_id, shards) == shard,
            space_artifacts=space_artifacts(self.args),
        )
        self.started = False
        self._ingress: Any = None
        self._closed = False
        if self.args.dedicated_calls == "direct":
            self.open_direct(SHARD_METHODS)

    async def _embed(self, tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
        if self._ingress is None:
            app = serve.get_replica_context().app_name
            self._ingress = serve.get_deployment_handle(INGRESS_DEPLOYMENT, app_name=app)
        vectors: npt.NDArray[np.float32] = await self._ingress.embed_for_index.remote(
            tenant, space, texts
        )
        return vectors

    async def sync(self, spaces: list[str]) -> dict[str, Any]:
        """Keep these spaces (the first call catches up with the change log); this
        shard's position and complete indexes."""
        if not self.started or spaces != self.service.spaces:
            await self.service.start(spaces)
            self.started = True
        return self.service.status()

    def term_stats(self, tenant: str, catalog: str, text: str) -> CorpusStats | None:
        """This shard's part of a query's BM25 statistics."""
        return self.service.term_stats(tenant, catalog, text)

    def term_stats_at(self, tenant: str, catalog: str, text: str) -> tuple[int, CorpusStats | None]:
        """`term_stats`, with the generation of this shard's index they were read at."""
        return self.service.term_stats_at(tenant, catalog, text)

    def candidates(
        self, q: SearchQuery, stats: CorpusStats | None, generation: int | None = None
    ) -> Candidates:
        """This shard's best items of each half of a search (with `generation`: when
        this shard's index has moved on from it, no BM25 half but its new statistics)."""
        return self.service.candidates(q, stats, generation)

    def __del__(self) -> Coroutine[Any, Any, None] | None:
        """Serve's replica shutdown, which awaits what this returns: direct callers told
        to stop and the calls held answered, then the change log no longer followed.
        Once only, so the garbage collector's call leaves no coroutine unawaited."""
        if getattr(self, "_closed", True):
            return None
        self._closed = True
        drain = self.close_direct()

        async def close() -> None:
            if drain is not None:
                await drain
            await self.service.close()

        return close()
