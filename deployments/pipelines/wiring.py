"""Builds the search service of a replica from the args and the live config."""

from __future__ import annotations

import time
from logging import Logger

import numpy as np
import numpy.typing as npt

from configs.schema import AppArgs, IngressLiveConfig
from deployments.pipelines.search import SearchService
from deployments.routing.router import VersionRouter
from deployments.tenancy.access import registry_url
from stores.secrets import load_secrets


def open_search(args: AppArgs, router: VersionRouter, log: Logger) -> SearchService | None:
    """The search service over the catalog store (the registry's database), or None
    when `search.enabled` is false."""
    if not args.search.enabled:
        return None
    from stores.catalog_sql import open_catalog_store

    store = open_catalog_store(registry_url(load_secrets()))

    async def embed(space: str, texts: list[str]) -> npt.NDArray[np.float32]:
        model, version = space.split("/", 1)
        deadline = time.monotonic() + args.request_timeout_s
        vectors, _ = await router.embed(model, version, texts, deadline)
        return vectors

    from deployments.observability.metrics import SearchMetrics

    def idle(space: str) -> bool:
        """Nothing waits for the version's inline batcher (dedicated: always)."""
        model, version = space.split("/", 1)
        batcher = getattr(router.backends.get((model, version)), "batcher", None)
        return batcher is None or batcher.queued_texts == 0

    metrics = SearchMetrics()
    return SearchService(store, embed, args.search.follow_s, log, metrics.pending_items, idle=idle)


def search_spaces(args: AppArgs, live: IngressLiveConfig) -> list[str]:
    """`model/version` of every version of the search model with traffic, a shadow or
    a canary: the embedding spaces catalogs keep an index for."""
    model = args.search_model()
    versions = {v for v, weight in live.traffic.get(model, {}).items() if weight > 0}
    shadow = live.shadow.get(model)
    if shadow is not None:
        versions.add(shadow.version)
    rollout = live.rollout.get(model)
    if rollout is not None:
        versions.add(rollout.canary)
    return [f"{model}/{v}" for v in sorted(versions)]
