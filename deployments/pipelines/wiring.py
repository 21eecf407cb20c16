"""Builds the search service and the embedding cache of a replica from the args, the
secrets and the live config; closes a replica's parts when it goes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from logging import Logger
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from configs.schema import AppArgs, IngressLiveConfig
from deployments.dataplane import NO_TENANT, SEARCH, DataPlane
from deployments.pipelines.search import EmbedFn, SearchService, SnapshotSource
from deployments.pipelines.shards import CALL_TIMEOUT_S, SYNC_TIMEOUT_S, ShardSet
from deployments.replicas.direct import DirectPool, DirectUnavailable
from deployments.replicas.remote import direct_pool, on_calling_loop
from deployments.tenancy.access import registry_url
from stores.embed_cache import EmbedCache, EmbedStore, MemoryStore
from stores.secrets import load_secrets

CACHE_REDIS_SECRET = "cache_redis_url"  # SERVEKIT_CACHE_REDIS_URL, or its file, dir, AWS key


def open_cache(log: Logger) -> EmbedCache:
    """The embedding cache: memory, and Redis when the `cache_redis_url` secret is set
    (the url may carry the password, hence a secret). Sized and switched on by the
    live config (`DataPlane.configure`)."""
    from deployments.observability.metrics import CacheMetrics

    memory = MemoryStore(0)
    redis: EmbedStore | None = None
    url = load_secrets().get(CACHE_REDIS_SECRET)
    if url:
        from stores.embed_cache_redis import RedisStore

        redis = RedisStore(url)
        log.info("embedding cache: memory, then Redis", extra={"fields": {"redis": redis.where}})
    return EmbedCache(memory, redis, CacheMetrics(lambda: memory.bytes), log)


def item_embedder(args: AppArgs, plane: DataPlane) -> EmbedFn:
    """How the search service embeds catalog items: through the embedding cache, as
    the catalog's tenant (the one tenant of auth off is the cache's `-`, as queries are)."""

    async def embed(tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
        model, version = space.split("/", 1)
        deadline = time.monotonic() + args.request_timeout_s
        owner = tenant if args.auth.enabled else NO_TENANT
        # Items go in cold: a catalog loaded in bulk never pushes hot queries out.
        vectors, _ = await plane.embed_cached(
            SEARCH, owner, model, version, texts, deadline, cold=True
        )
        return vectors

    return embed


def open_search(
    args: AppArgs, plane: DataPlane, log: Logger, shards: list[Any] | None = None
) -> SearchService | None:
    """The search service over the catalog store (the registry's database), or None
    when `search.enabled` is false. `shards`: the catalog shards' deployment handles
    (`search.shards` > 1, in `args.shard_names()`'s order): the items then live there,
    and searches fan out, directly with `dedicated_calls: direct`."""
    if not args.search.enabled:
        return None
    from stores.catalog_sql import open_catalog_store

    store = open_catalog_store(registry_url(load_secrets()))
    router = plane.router

    from deployments.observability.metrics import SearchMetrics

    def idle(space: str) -> bool:
        """Nothing waits for the version's inline batcher (dedicated: always)."""
        model, version = space.split("/", 1)
        batcher = getattr(router.backends.get((model, version)), "batcher", None)
        return batcher is None or batcher.queued_texts == 0

    metrics = SearchMetrics()
    embed = item_embedder(args, plane)
    return SearchService(
        store,
        embed,
        args.search.follow_s,
        log,
        metrics.pending_items,
        idle=idle,
        snapshots=snapshot_sources(args),
        space_artifacts=space_artifacts(args),
        shards=ShardSet(shard_calls(args, shards), log, metrics.shard_round) if shards else None,
    )


def snapshot_sources(args: AppArgs) -> list[SnapshotSource]:
    """A loader per declared catalog snapshot: fetched into the artifact cache and
    checked against its sha256 (once per machine), then read."""
    from configs.settings import resolve_artifact_uri
    from models import ArtifactRef, ArtifactStore
    from models.catalog_snapshot import CatalogSnapshot, read_snapshot

    cache = Path(args.artifact_cache_dir) if args.artifact_cache_dir else None
    store = ArtifactStore(cache_dir=cache)
    sources: list[SnapshotSource] = []
    for spec in args.search.snapshots:
        uri = resolve_artifact_uri(spec.artifact.uri, args.artifact_root)
        ref = ArtifactRef(uri=uri, sha256=spec.artifact.sha256)

        def load(ref: ArtifactRef = ref) -> CatalogSnapshot:
            return read_snapshot(store.fetch_file(ref, ".snapshot"))

        sources.append((spec.tenant_id, spec.catalog, load))
    return sources


def space_artifacts(args: AppArgs) -> dict[str, str]:
    """The artifact sha256 of every space catalogs may index (each version of the search
    model and of the recommender): what names a space's vectors in the store, so every
    search service over the store is given the same."""
    models = [args.search_model(), *([r] if (r := args.recommender()) else [])]
    return {
        f"{m}/{v}": spec.artifact.sha256
        for m in models
        for v, spec in args.models[m].versions.items()
    }


def search_spaces(args: AppArgs, live: IngressLiveConfig) -> list[str]:
    """`model/version` of every version of the search model, and of the recommender,
    with traffic, a shadow or a canary: the spaces catalogs keep an index for (one that
    leaves this list keeps its index for `search.RETAIN_S`, for a quick rollback)."""
    models = [args.search_model(), *([r] if (r := args.recommender()) else [])]
    return [f"{m}/{v}" for m in models for v in sorted(live.versions_in_use(m))]


def shard_calls(args: AppArgs, handles: Sequence[Any]) -> list[ShardCalls]:
    """How this Ingress reaches each catalog shard: directly when `dedicated_calls` is
    `direct` and it runs in a Serve replica, else through the handle alone."""
    return [
        ShardCalls(handle, direct_pool(args, name))
        for name, handle in zip(args.shard_names(), handles, strict=True)
    ]


class ShardCalls:
    """A catalog shard reached directly (`direct`, its replicas' own connections) or
    through its deployment handle, whose router runs on the replica's event loop (set
    up there on first use, see `remote.on_calling_loop`); the handle whenever the
    direct way is not open, or a call sent on it was lost (the shard's calls read
    only)."""

    def __init__(self, handle: Any, direct: DirectPool | None = None) -> None:
        self._handle = handle
        self.direct = direct

    @property
    def handle(self) -> Any:
        return on_calling_loop(self._handle)  # sets it up on first use only

    async def _call(self, method: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        if self.direct is not None:
            try:
                return await self.direct.call(method, args, timeout_s)
            except DirectUnavailable:
                pass
        return await getattr(self.handle, method).remote(*args)

    async def sync(self, spaces: list[str]) -> dict[str, Any]:
        """Keep these spaces; the shard's status."""
        result: dict[str, Any] = await self._call("sync", (spaces,), SYNC_TIMEOUT_S)
        return result

    async def term_stats(self, tenant: str, catalog: str, text: str) -> Any:
        """The shard's part of a query's BM25 statistics."""
        return await self._call("term_stats", (tenant, catalog, text), CALL_TIMEOUT_S)

    async def term_stats_at(self, tenant: str, catalog: str, text: str) -> Any:
        """The same, with the generation of the shard's index they were read at."""
        return await self._call("term_stats_at", (tenant, catalog, text), CALL_TIMEOUT_S)

    async def candidates(self, q: Any, stats: Any, generation: int | None = None) -> Any:
        """The shard's best items of each half (`generation`: see `ShardSet`)."""
        args = (q, stats) if generation is None else (q, stats, generation)
        return await self._call("candidates", args, CALL_TIMEOUT_S)

    async def close(self) -> None:
        """Close the direct connections (the replica's shutdown)."""
        if self.direct is not None:
            await self.direct.close()


class Closeable(Protocol):
    """A replica's part that holds something to let go of (a store, a process)."""

    async def close(self) -> None:
        """Let it go."""


async def close_parts(parts: Sequence[Closeable | None], log: Logger) -> None:
    """Close each part in order, whatever the others do (a replica's shutdown)."""
    for part in parts:
        if part is None:
            continue
        try:
            await part.close()
        except Exception as e:
            fields = {"part": type(part).__name__, "error": type(e).__name__}
            log.warning("a part did not close", extra={"fields": fields})
