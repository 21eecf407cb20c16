"""Every operation the clients call, keyed by the client method that calls it
(`admin.` for the admin API). A test of the repository checks this table against the
OpenAPI document: every `/v1` and `/admin/v1` operation is here, and each response type
is the schema the document names.

Idempotent: a repeat has the effect of one call, so a call whose answer was lost may
be sent again. GET, PUT, DELETE and PATCH (which sets values) are; so are the POSTs that
only read (embeddings, search, recommendations), and `POST /v1/events`: the service
stores a batch once per `Idempotency-Key`, else per `X-Request-ID` (which a call sends
unchanged on every attempt), and answers a repeat within 24 h as it answered the first.
The other POSTs create something each time (a tenant, a key, a rotated key), so they
are repeated only when the service certainly did not act: see `_retry.py`.
"""

from __future__ import annotations

from typing import Any

from servekit_client._base import Route
from servekit_client.models import (
    ApiKey,
    Catalog,
    CatalogList,
    CreatedApiKey,
    DashboardState,
    Embeddings,
    EventsResult,
    Features,
    Item,
    ItemDeleted,
    MetricsSnapshot,
    ModelDetail,
    ModelList,
    Recommendations,
    SearchIndexes,
    SearchResult,
    Tenant,
    UpsertResult,
    UsageReport,
)
from servekit_client.response import ResponseList

EMBED: Route[Embeddings] = Route("POST", "/v1/embeddings", Embeddings, idempotent=True)
SEARCH: Route[SearchResult] = Route("POST", "/v1/search", SearchResult, idempotent=True)
RECOMMEND: Route[Recommendations] = Route(
    "POST", "/v1/recommendations", Recommendations, idempotent=True
)
LIST_CATALOGS: Route[CatalogList] = Route("GET", "/v1/catalogs", CatalogList, idempotent=True)
CONFIGURE_CATALOG: Route[Catalog] = Route("PUT", "/v1/catalogs/{catalog}", Catalog, idempotent=True)
UPSERT_ITEMS: Route[UpsertResult] = Route(
    "PUT", "/v1/catalogs/{catalog}/items", UpsertResult, idempotent=True
)
GET_ITEM: Route[Item] = Route(
    "GET", "/v1/catalogs/{catalog}/items/{item_id}", Item, idempotent=True
)
DELETE_ITEM: Route[ItemDeleted] = Route(
    "DELETE", "/v1/catalogs/{catalog}/items/{item_id}", ItemDeleted, idempotent=True
)
SEND_EVENTS: Route[EventsResult] = Route("POST", "/v1/events", EventsResult, idempotent=True)
GET_FEATURES: Route[Features] = Route(
    "GET", "/v1/features/{entity}/{entity_id}", Features, idempotent=True
)
LIST_MODELS: Route[ModelList] = Route("GET", "/v1/models", ModelList, idempotent=True)
GET_MODEL: Route[ModelDetail] = Route("GET", "/v1/models/{name}", ModelDetail, idempotent=True)
GET_USAGE: Route[UsageReport] = Route("GET", "/v1/usage", UsageReport, idempotent=True)

# A list answer comes back as a ResponseList (`finish` makes it one, with `.response`).
LIST_TENANTS: Route[ResponseList[Tenant]] = Route(
    "GET", "/admin/v1/tenants", list[Tenant], idempotent=True
)
CREATE_TENANT: Route[Tenant] = Route("POST", "/admin/v1/tenants", Tenant, idempotent=False)
GET_TENANT: Route[Tenant] = Route("GET", "/admin/v1/tenants/{tenant_id}", Tenant, idempotent=True)
UPDATE_TENANT: Route[Tenant] = Route(
    "PATCH", "/admin/v1/tenants/{tenant_id}", Tenant, idempotent=True
)
LIST_KEYS: Route[ResponseList[ApiKey]] = Route(
    "GET", "/admin/v1/tenants/{tenant_id}/keys", list[ApiKey], idempotent=True
)
CREATE_KEY: Route[CreatedApiKey] = Route(
    "POST", "/admin/v1/tenants/{tenant_id}/keys", CreatedApiKey, idempotent=False
)
REVOKE_KEY: Route[ApiKey] = Route(
    "DELETE", "/admin/v1/tenants/{tenant_id}/keys/{key_id}", ApiKey, idempotent=True
)
ROTATE_KEY: Route[CreatedApiKey] = Route(
    "POST",
    "/admin/v1/tenants/{tenant_id}/keys/{key_id}/rotate",
    CreatedApiKey,
    idempotent=False,
)
TENANT_USAGE: Route[UsageReport] = Route(
    "GET", "/admin/v1/tenants/{tenant_id}/usage", UsageReport, idempotent=True
)
SEARCH_INDEXES: Route[SearchIndexes] = Route(
    "GET", "/admin/v1/search/indexes", SearchIndexes, idempotent=True
)
DASHBOARD_STATE: Route[DashboardState] = Route(
    "GET", "/admin/v1/dashboard/state", DashboardState, idempotent=True
)
DASHBOARD_METRICS: Route[MetricsSnapshot] = Route(
    "GET", "/admin/v1/dashboard/metrics", MetricsSnapshot, idempotent=True
)

# The client method that calls each route.
ROUTES: dict[str, Route[Any]] = {
    "embed": EMBED,
    "search": SEARCH,
    "recommend": RECOMMEND,
    "list_catalogs": LIST_CATALOGS,
    "configure_catalog": CONFIGURE_CATALOG,
    "upsert_items": UPSERT_ITEMS,
    "get_item": GET_ITEM,
    "delete_item": DELETE_ITEM,
    "send_events": SEND_EVENTS,
    "get_features": GET_FEATURES,
    "list_models": LIST_MODELS,
    "get_model": GET_MODEL,
    "get_usage": GET_USAGE,
    "admin.list_tenants": LIST_TENANTS,
    "admin.create_tenant": CREATE_TENANT,
    "admin.get_tenant": GET_TENANT,
    "admin.update_tenant": UPDATE_TENANT,
    "admin.list_keys": LIST_KEYS,
    "admin.create_key": CREATE_KEY,
    "admin.revoke_key": REVOKE_KEY,
    "admin.rotate_key": ROTATE_KEY,
    "admin.tenant_usage": TENANT_USAGE,
    "admin.search_indexes": SEARCH_INDEXES,
    "admin.dashboard_state": DASHBOARD_STATE,
    "admin.dashboard_metrics": DASHBOARD_METRICS,
}
