"""Builds a replica's feature service from the args and the secrets: the online store
(Redis when the `features_redis_url` secret is set, else the embedded SQLite file beside
the embedded registry), the event log (the registry's database) and the item
attributes (the search service's catalogs, in this replica's memory)."""

from __future__ import annotations

import asyncio
from logging import Logger
from pathlib import Path

from sqlalchemy import make_url

from configs.features import load_definitions
from configs.schema import AppArgs
from configs.settings import PROJECT_ROOT
from deployments.pipelines.features import (
    Attributes,
    FeatureService,
    ItemLookup,
    item_attributes,
)
from deployments.pipelines.search import SearchService
from deployments.tenancy.access import registry_url
from stores.features import OnlineStore
from stores.secrets import load_secrets

FEATURES_REDIS_SECRET = "features_redis_url"  # SERVEKIT_FEATURES_REDIS_URL, or its file...


def embedded_path(registry: str) -> Path:
    """The embedded store's file: beside an SQLite registry, else under `.servekit/`."""
    url = make_url(registry)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent / "features.db"
    return PROJECT_ROOT / ".servekit" / "features.db"


def open_online_store(timeout_s: float, log: Logger) -> OnlineStore:
    """Redis when the `features_redis_url` secret is set (the url may carry the
    password), else the embedded SQLite file."""
    secrets = load_secrets()
    url = secrets.get(FEATURES_REDIS_SECRET)
    if url:
        from stores.features_redis import RedisFeatureStore

        store = RedisFeatureStore(url, timeout_s=timeout_s)
        log.info("online features: Redis", extra={"fields": {"redis": store.where}})
        return store
    from stores.features_sqlite import SqliteFeatureStore

    return SqliteFeatureStore(embedded_path(registry_url(secrets)))


def catalog_items(search: SearchService | None) -> ItemLookup | None:
    """Item attributes from the search service's catalogs (None without search): from
    this replica's index, or, on the ingress of sharded catalogs (whose items the shards
    hold, not this replica), from the catalog store."""
    if search is None:
        return None
    if search.shards is not None:
        store = search.store

        def read(tenant: str, catalog: str, item_ids: list[str]) -> Attributes:
            items = store.get_many(tenant, catalog, item_ids)
            return {i: item_attributes(item.attributes, item.text) for i, item in items.items()}

        async def from_store(tenant: str, catalog: str, item_ids: list[str]) -> Attributes:
            return await asyncio.to_thread(read, tenant, catalog, item_ids)

        return from_store

    async def lookup(tenant: str, catalog: str, item_ids: list[str]) -> Attributes:
        index = search.catalogs.get((tenant, catalog))
        found: Attributes = {}
        if index is None:
            return found
        for item_id in item_ids:
            item = index.get(item_id)
            if item is not None:
                found[item_id] = item_attributes(item.attributes, item.text)
        return found

    return lookup


def open_features(
    args: AppArgs, search: SearchService | None, log: Logger
) -> FeatureService | None:
    """The feature service, or None when `features.enabled` is false."""
    settings = args.features
    if not settings.enabled:
        return None
    from deployments.observability.metrics import FeatureMetrics
    from stores.events_sql import open_event_log

    definitions = load_definitions(settings.definitions)
    store = open_online_store(settings.store_timeout_s, log)
    events = open_event_log(registry_url(load_secrets()))
    meter = FeatureMetrics()
    return FeatureService(definitions, store, events, catalog_items(search), log, meter)
