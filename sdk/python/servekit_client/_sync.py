"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any, Literal, TypeVar

import httpx

from servekit_client import _routes as r
from servekit_client._base import (
    ApiKeyArg,
    Route,
    TimeoutLike,
    answered,
    body,
    build,
    connection_error,
    day,
    finish,
    idempotency_headers,
    limits_patch,
    names,
    path,
    pin_headers,
    query,
    resolve,
    with_options,
)
from servekit_client._retry import (
    NOT_SENT,
    RetryPolicy,
    maybe_acted,
    resource_missing,
    retry_after_s,
    retry_answer,
    retry_exception,
)
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
    Limits,
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
from servekit_client.types import EventInput, ItemInput, LimitsInput, Scope

T = TypeVar("T")
_sleep = time.sleep  # replaced by the tests of the retry loop


class Client:
    """servekit's API over HTTP, one call at a time (thread-safe; reuse one client).

    `api_key` defaults to `SERVEKIT_API_KEY`; with neither, the client is refused
    (`InvalidArgumentError`) unless `api_key=False`, which sends no key (a service with
    auth off). `base_url` defaults to `SERVEKIT_URL`, else `http://127.0.0.1:8000`.
    `timeout` (seconds, or an `httpx.Timeout`) bounds each attempt. Calls answered 429
    or 503, and calls that could not connect, are retried up to `max_retries` times
    with exponential backoff and jitter, waiting `Retry-After` when the service gives
    one; see `RetryPolicy` for the rest. Use as a context manager, or call
    `close()`.
    """

    def __init__(
        self,
        api_key: ApiKeyArg = None,
        base_url: str | None = None,
        *,
        timeout: TimeoutLike = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = resolve(api_key, base_url, timeout, max_retries, retry)
        self._http = httpx.Client(
            base_url=self._settings.base_url,
            headers=self._settings.headers,
            timeout=self._settings.timeout,
            transport=transport,
        )
        self._owns_http = True
        self.admin = Admin(self)

    @property
    def base_url(self) -> str:
        """The service's address."""
        return self._settings.base_url

    def __repr__(self) -> str:
        return f"Client(base_url={self._settings.base_url!r})"  # never the key

    def with_options(
        self, *, timeout: TimeoutLike = None, max_retries: int | None = None
    ) -> Client:
        """A client sharing this one's connections, with another timeout or retry count."""
        other = object.__new__(Client)
        other._settings = with_options(self._settings, timeout, max_retries)
        other._http = self._http
        other._owns_http = False  # closing it leaves this client's connections open
        other.admin = Admin(other)
        return other

    def close(self) -> None:
        """Close the connections (a `with_options` client's belong to its parent: kept)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(
        self,
        route: Route[T],
        url: str | None = None,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        done_on_404: Callable[[], T] | None = None,
    ) -> T:
        """One call: sent, retried while the policy allows, answered or raised.
        `done_on_404`: the answer when a repeat, sent after an attempt that may have
        acted (its answer lost, or a proxy's 503), gets servekit's own 404 naming the
        missing resource (a delete that the earlier attempt already did)."""
        policy = self._settings.retry
        request, rid = build(
            self._http, route, url or route.path, json, params, headers, self._settings.timeout
        )
        retry = 0
        lost = False  # an attempt may have reached the service, its answer did not come
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError as e:
                wait = policy.delay_s(retry, None) if retry_exception(e, route.idempotent) else None
                if wait is None:
                    failure = connection_error(e, rid, self._settings.api_key)
                    raise failure from failure.__cause__
                lost = lost or not isinstance(e, NOT_SENT)
            else:
                wait = None
                if lost and done_on_404 is not None and resource_missing(response):
                    return answered(done_on_404(), response, rid)
                lost = lost or maybe_acted(response)
                if retry_answer(response, route.idempotent):
                    wait = policy.delay_s(retry, retry_after_s(response.headers.get("retry-after")))
                if wait is None:
                    return finish(route, response, rid)
            _sleep(wait)
            retry += 1

    # ---- /v1 ---------------------------------------------------------------------

    def embed(
        self,
        input: str | Sequence[str],
        *,
        model: str,
        encoding_format: Literal["float", "base64"] | None = None,
        dimensions: int | None = None,
        user: str | None = None,
        model_version: str | None = None,
        routing_key: str | None = None,
    ) -> Embeddings:
        """Embed a text or a list of texts (`POST /v1/embeddings`). `model_version` pins
        a version (a key with the right to pin); `routing_key` (else `user`) keeps a
        caller on one version of the traffic split."""
        doc = body(
            input=input if isinstance(input, str) else list(input),
            model=model,
            encoding_format=encoding_format,
            dimensions=dimensions,
            user=user,
        )
        return self._send(r.EMBED, json=doc, headers=pin_headers(model_version, routing_key))

    def search(
        self,
        catalog: str,
        query: str,
        *,
        k: int | None = None,
        filters: Mapping[str, Any] | None = None,
        hybrid: bool | None = None,
        user: str | None = None,
        model_version: str | None = None,
        routing_key: str | None = None,
    ) -> SearchResult:
        """Search a catalog (`POST /v1/search`): the `k` best items (default 10),
        restricted by `filters`, fused with BM25 when `hybrid`."""
        doc = body(catalog=catalog, query=query, k=k, filters=filters, hybrid=hybrid, user=user)
        return self._send(r.SEARCH, json=doc, headers=pin_headers(model_version, routing_key))

    def recommend(
        self,
        user: str,
        *,
        k: int | None = None,
        catalog: str | None = None,
        filters: Mapping[str, Any] | None = None,
        exclude_seen: bool | None = None,
        context: Mapping[str, str] | None = None,
        model_version: str | None = None,
        routing_key: str | None = None,
    ) -> Recommendations:
        """Items for one end user (`POST /v1/recommendations`): the `k` best (default
        10) of `catalog` (default: the tenant's only one) within `filters`, leaving out
        what the user touched recently unless `exclude_seen=False`; `context` says where
        the user is (`item`: the item being looked at)."""
        doc = body(
            user=user,
            k=k,
            catalog=catalog,
            filters=filters,
            exclude_seen=exclude_seen,
            context=context,
        )
        return self._send(r.RECOMMEND, json=doc, headers=pin_headers(model_version, routing_key))

    def list_catalogs(self) -> CatalogList:
        """The tenant's catalogs with item counts and settings (`GET /v1/catalogs`)."""
        return self._send(r.LIST_CATALOGS)

    def configure_catalog(self, catalog: str, *, hybrid: bool | None = None) -> Catalog:
        """Create a catalog or replace its settings (`PUT /v1/catalogs/{catalog}`); a
        setting left out takes the service default."""
        url = path(r.CONFIGURE_CATALOG, catalog=catalog)
        return self._send(r.CONFIGURE_CATALOG, url, json=body(hybrid=hybrid))

    def upsert_items(self, catalog: str, items: Sequence[ItemInput]) -> UpsertResult:
        """Insert or replace items (`PUT /v1/catalogs/{catalog}/items`): durable when
        answered, searchable on every replica within a second."""
        url = path(r.UPSERT_ITEMS, catalog=catalog)
        return self._send(r.UPSERT_ITEMS, url, json=body(items=list(items)))

    def get_item(self, catalog: str, item_id: str) -> Item:
        """One stored item (`GET /v1/catalogs/{catalog}/items/{item_id}`)."""
        url = path(r.GET_ITEM, catalog=catalog, item_id=item_id)
        return self._send(r.GET_ITEM, url)

    def delete_item(self, catalog: str, item_id: str) -> ItemDeleted:
        """Delete an item (`DELETE /v1/catalogs/{catalog}/items/{item_id}`); one already
        gone raises `NotFoundError`, unless an earlier attempt of this call, whose answer
        was lost, deleted it."""
        url = path(r.DELETE_ITEM, catalog=catalog, item_id=item_id)
        done = ItemDeleted(id=item_id, deleted=True)
        return self._send(r.DELETE_ITEM, url, done_on_404=lambda: done)

    def send_events(
        self,
        events: Sequence[EventInput],
        *,
        catalog: str | None = None,
        idempotency_key: str | None = None,
    ) -> EventsResult:
        """Record interactions (`POST /v1/events`). When some events are invalid the
        rest are kept and `InvalidEventsError` says which (its `result`). The service
        stores a batch once per `idempotency_key` (`Idempotency-Key`, 1 to 128 visible
        ASCII characters; kept 24 h), else per this call's request id, so an attempt
        whose answer was lost is repeated and a repeat is answered as the first was. To
        resend a batch in a later call (after `APIConnectionError`, or from another
        process), give both calls the same `idempotency_key`; one key sent with another
        batch is a `BadRequestError` (`idempotency_key_reused`)."""
        headers = idempotency_headers(idempotency_key)
        return self._send(
            r.SEND_EVENTS, json=body(catalog=catalog, events=list(events)), headers=headers
        )

    def get_features(self, entity: Literal["user", "item"], entity_id: str) -> Features:
        """A user's or an item's online features (`GET /v1/features/{entity}/{id}`)."""
        url = path(r.GET_FEATURES, entity=entity, entity_id=entity_id)
        return self._send(r.GET_FEATURES, url)

    def list_models(self) -> ModelList:
        """Served models, their versions and current weights (`GET /v1/models`)."""
        return self._send(r.LIST_MODELS)

    def get_model(self, name: str) -> ModelDetail:
        """One model with rollout state (`GET /v1/models/{name}`)."""
        return self._send(r.GET_MODEL, path(r.GET_MODEL, name=name))

    def get_usage(
        self, *, start: date | str | None = None, end: date | str | None = None
    ) -> UsageReport:
        """The calling key's tenant's usage per model and UTC day (`GET /v1/usage`);
        default: from the first of `end`'s month to today."""
        return self._send(r.GET_USAGE, params=query(start=day(start), end=day(end)))


class Admin:
    """The admin API (`/admin/v1`): the operator manages every tenant, a key with the
    `admin` scope its own tenant's keys and usage."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list_tenants(self) -> ResponseList[Tenant]:
        """Every tenant (the operator), or the caller's own."""
        return self._client._send(r.LIST_TENANTS)

    def create_tenant(
        self,
        name: str,
        *,
        id: str | None = None,
        limits: Limits | LimitsInput | None = None,
    ) -> Tenant:
        """A new tenant (operator); `id` default: generated."""
        return self._client._send(r.CREATE_TENANT, json=body(name=name, id=id, limits=limits))

    def get_tenant(self, tenant_id: str) -> Tenant:
        """One tenant."""
        return self._client._send(r.GET_TENANT, path(r.GET_TENANT, tenant_id=tenant_id))

    def update_tenant(
        self,
        tenant_id: str,
        *,
        limits: Limits | LimitsInput | None = None,
        disabled: bool | None = None,
    ) -> Tenant:
        """Change the limits named (the others are kept; a limit named with None is
        removed), or disable a tenant (its keys refused) (operator)."""
        url = path(r.UPDATE_TENANT, tenant_id=tenant_id)
        doc = body(disabled=disabled)
        if limits is not None:
            doc["limits"] = limits_patch(limits)
        return self._client._send(r.UPDATE_TENANT, url, json=doc)

    def list_keys(self, tenant_id: str) -> ResponseList[ApiKey]:
        """Every key of a tenant, revoked and expired ones included (never the key)."""
        return self._client._send(r.LIST_KEYS, path(r.LIST_KEYS, tenant_id=tenant_id))

    def create_key(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        scopes: Sequence[Scope] | None = None,
        models: Sequence[str] | None = None,
        may_pin: bool | None = None,
        expires_in_s: int | None = None,
        limits: Limits | LimitsInput | None = None,
    ) -> CreatedApiKey:
        """A new key; `key` is in this answer only. Defaults: every scope but `admin`,
        every model, never expires, the tenant's limits."""
        doc = body(
            name=name,
            scopes=names("scopes", scopes),
            models=names("models", models),
            may_pin=may_pin,
            expires_in_s=expires_in_s,
            limits=limits,
        )
        return self._client._send(r.CREATE_KEY, path(r.CREATE_KEY, tenant_id=tenant_id), json=doc)

    def revoke_key(self, tenant_id: str, key_id: str) -> ApiKey:
        """Revoke a key now, on every replica within seconds."""
        url = path(r.REVOKE_KEY, tenant_id=tenant_id, key_id=key_id)
        return self._client._send(r.REVOKE_KEY, url)

    def rotate_key(
        self, tenant_id: str, key_id: str, *, overlap_s: float | None = None
    ) -> CreatedApiKey:
        """A new key with the old one's rights; the old one stays valid for `overlap_s`
        (default: the service's `auth.rotation_overlap_s`)."""
        url = path(r.ROTATE_KEY, tenant_id=tenant_id, key_id=key_id)
        return self._client._send(r.ROTATE_KEY, url, json=body(overlap_s=overlap_s))

    def tenant_usage(
        self, tenant_id: str, *, start: date | str | None = None, end: date | str | None = None
    ) -> UsageReport:
        """A tenant's usage per model and UTC day."""
        url = path(r.TENANT_USAGE, tenant_id=tenant_id)
        return self._client._send(r.TENANT_USAGE, url, params=query(start=day(start), end=day(end)))

    def search_indexes(self, *, stored: str | None = None) -> SearchIndexes:
        """Per catalog, each version's index and whether it is complete; with `stored`
        (a declared `model/version`), each catalog's `stored` vectors of it too."""
        return self._client._send(r.SEARCH_INDEXES, params=query(stored=stored))

    def dashboard_state(self) -> DashboardState:
        """What the dashboard shows: models with weights and rollout state, deployments
        with replicas, today's usage per tenant (a tenant admin: its own)."""
        return self._client._send(r.DASHBOARD_STATE)

    def dashboard_metrics(self) -> MetricsSnapshot:
        """servekit's counters and histograms, summed over every replica on every node."""
        return self._client._send(r.DASHBOARD_METRICS)
