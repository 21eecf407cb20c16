"""Catalogs and search: `PUT/GET/DELETE /v1/catalogs/{catalog}/items...`, `GET
/v1/catalogs` and `POST /v1/search` (scope `search`). Every catalog belongs to the
calling key's tenant; another tenant's catalog of the same name is a different one.

A search embeds the query with the version the traffic split (or a sticky key, or a
pin) picks, and searches that version's index of the catalog, so query and items are
always in the same embedding space; while a version's index is still being built, the
most-weighted version whose index is complete answers (a pin to it: 503).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from deployments.dataplane import CallRecord
from deployments.errors import BadRequest, NotFound, ServekitError, Unavailable
from deployments.http.embeddings import ROUTING_KEY_MAX_CHARS
from deployments.http.fields import AnyCharacterRoute, PathId, StoredText, UnicodeText
from deployments.http.hosted import admit_admin_call, replica_host, run_route
from deployments.http.hot import serve_json
from deployments.http.inference import json_response
from deployments.http.route_docs import example, responses
from deployments.pipelines.catalog_index import Hit, SearchQuery
from deployments.pipelines.filters import FilterError
from deployments.pipelines.personalize import depth, personalize
from deployments.pipelines.search import SearchService
from deployments.tenancy.principal import NO_AUTH_TENANT
from models.fusion import rrf_top
from models.recommender import Profile
from stores.catalog import (
    MAX_ATTRIBUTES,
    MAX_ITEM_ID,
    MAX_TEXT_FIELDS,
    NOT_UNICODE,
    AttrValue,
    CatalogInfo,
    Item,
    attribute_problem,
    is_unicode,
)

CATALOG_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$"


router = APIRouter(tags=["search"], route_class=AnyCharacterRoute)
CatalogName = Annotated[str, Path(pattern=CATALOG_PATTERN, description="Catalog name.")]
ItemId = Annotated[StoredText, Path(min_length=1, max_length=256, description="Item id.")]
# 404 while search is off; 400 also for the operator credential, which has no catalogs.
ERRORS = responses(400, 404)
_SHOE = {
    "id": "sku-1042",
    "text": {"title": "Trail running shoe", "description": "Light, grippy, waterproof."},
    "attributes": {"category": "shoes", "price": 89.9, "tags": ["running", "outdoor"],
                   "in_stock": True},
}  # fmt: skip
_CATALOG = {"name": "products", "items": 1200, "created_at": "2026-11-02T09:40:00+00:00",
            "settings": {"hybrid": True}}  # fmt: skip


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _attribute(value: Any) -> AttrValue:
    """An attribute value as the JSON body has it; one error naming the attribute
    otherwise (not one per kind of value it could have been): NaN, infinities and
    integers past what every JSON reader holds exactly (2^53) included."""
    problem = attribute_problem(value)
    if problem is not None:
        raise PydanticCustomError("attribute_value", problem)
    attribute: AttrValue = value
    return attribute


AttrIn = Annotated[AttrValue, PlainValidator(_attribute, json_schema_input_type=AttrValue)]


def _unicode_names(value: Any) -> Any:
    """The object's names checked before its entries, so that the error names the object
    (a name's own path would hold the character no UTF-8 writer writes)."""
    if isinstance(value, dict) and not all(is_unicode(k) for k in value if isinstance(k, str)):
        raise PydanticCustomError("not_unicode", f"names are {NOT_UNICODE}")
    return value


# Text no UTF-8 writer writes (JSON's `\ud800` escape, which FastAPI's JSON reader takes)
# is refused: an item holding it in a name was stored, then made every read of it and
# every search finding it a 500; in a text field, the upsert a 500 (the tokenizer).
TextFields = Annotated[dict[str, UnicodeText], BeforeValidator(_unicode_names)]
Attributes = Annotated[dict[str, AttrIn], BeforeValidator(_unicode_names)]


class ItemIn(_Body):
    """A catalog item: text fields (embedded and matched by BM25) and attributes (for
    filters)."""

    # The limits `stores.catalog.item_problem` applies to items that come another way.
    id: PathId = Field(min_length=1, max_length=MAX_ITEM_ID)
    text: TextFields = Field(
        min_length=1,
        max_length=MAX_TEXT_FIELDS,
        description="Text fields, e.g. title, description, brand.",
    )
    attributes: Attributes = Field(
        default_factory=dict,
        max_length=MAX_ATTRIBUTES,
        description="e.g. category, price, tags, in_stock.",
    )


class UpsertBody(_Body):
    """Items to insert or replace."""

    model_config = ConfigDict(json_schema_extra=example({"items": [_SHOE]}))

    items: list[ItemIn] = Field(min_length=1)


class UpsertOut(BaseModel):
    """What was written: durable, and searchable on every replica within a second."""

    model_config = ConfigDict(
        json_schema_extra=example({"catalog": "products", "upserted": 1, "seq": 5187})
    )

    catalog: str
    upserted: int
    seq: int


class ItemOut(BaseModel):
    """A stored item."""

    model_config = ConfigDict(
        json_schema_extra=example({**_SHOE, "updated_at": "2026-12-01T18:02:11+00:00"})
    )

    id: str
    text: dict[str, str]
    attributes: dict[str, AttrValue]
    updated_at: str | None


class CatalogSettingsIn(_Body):
    """A catalog's settings; a field left out (or null) takes the service default."""

    model_config = ConfigDict(json_schema_extra=example({"hybrid": True}))

    hybrid: bool | None = Field(
        None,
        description="Whether searches of this catalog fuse BM25 with the vectors unless "
        "the request says; null: `search.hybrid_default`.",
    )


class CatalogOut(BaseModel):
    """A catalog of the caller's tenant."""

    model_config = ConfigDict(json_schema_extra=example(_CATALOG))

    name: str
    items: int
    created_at: str
    settings: dict[str, Any]


class SearchBody(_Body):
    """A search over one catalog."""

    model_config = ConfigDict(
        json_schema_extra=example(
            {"catalog": "products", "query": "waterproof running shoes", "k": 5},
            {"catalog": "products", "query": "running shoes", "k": 10, "hybrid": True,
             "filters": {"category": "shoes", "price": {"lte": 120}, "tags": {"any": ["trail"]}},
             "user": "u-829"},
        ),
    )  # fmt: skip

    catalog: str = Field(pattern=CATALOG_PATTERN)
    query: str = Field(min_length=1)
    k: int = Field(10, ge=1, description="How many results (at most `search.max_k`).")
    filters: dict[str, Any] | None = Field(
        None,
        description="attribute: value (equality), {gte, gt, lte, lt} (numbers), "
        "{in: [...]} or {any: [...]} (tags).",
    )
    hybrid: bool | None = Field(
        None,
        description="Fuse BM25 with the vectors; default: the catalog's `hybrid` setting, "
        "else `search.hybrid_default`.",
    )
    user: StoredText | None = Field(
        None,
        max_length=256,
        description="The end user: keeps them on one version, and reorders the best "
        "candidates by their category and brand affinities (online features).",
    )


class SearchHit(BaseModel):
    """One result."""

    id: str
    score: float
    text: dict[str, str]
    attributes: dict[str, AttrValue]


class SearchOut(BaseModel):
    """Ranked items, the version that embedded the query and the index it searched."""

    model_config = ConfigDict(
        json_schema_extra=example(
            {"object": "search.result", "catalog": "products", "model": "minilm",
             "version": "v1",
             "index": {"space": "minilm/v1", "seq": 5187, "hybrid": True, "search_ms": 1.84},
             "data": [{**_SHOE, "score": 0.8123}]}
        )
    )  # fmt: skip

    object: str
    catalog: str
    model: str
    version: str
    index: dict[str, Any]
    data: list[SearchHit]


def search_tenant(call: CallRecord) -> str:
    """The caller's tenant, whose catalogs the call reads and writes."""
    return caller_tenant(call, "catalogs")


def caller_tenant(call: CallRecord, owned: str) -> str:
    """The tenant of the calling key (`NO_AUTH_TENANT` with auth off); 400 for the
    operator's credential, which owns no `owned` (catalogs, end users)."""
    principal = call.principal
    if principal is None:
        return NO_AUTH_TENANT
    if principal.operator:
        raise BadRequest(f"tenant: the operator credential has no {owned}; use a tenant's key")
    return principal.tenant_id


def _service(host: Any) -> SearchService:
    service: SearchService | None = host.search
    if service is None:
        raise NotFound("no such route (search is off)")
    return service


def _item(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "text": item.text,
        "attributes": item.attributes,
        "updated_at": item.updated_at.isoformat() if item.updated_at else None,
    }


def _hit(hit: Hit) -> dict[str, Any]:
    item = hit.item
    return {"id": item.id, "score": round(hit.score, 6), "text": item.text,
            "attributes": item.attributes}  # fmt: skip


@router.put(
    "/v1/catalogs/{catalog}/items",
    summary="Insert or replace catalog items",
    response_model=UpsertOut,
    responses=ERRORS,
)
async def upsert_items(request: Request, catalog: CatalogName, body: UpsertBody) -> Response:
    """Durable when answered; searchable here at once and on every replica within 1 s.
    Each item is embedded by every version that serves search (traffic, shadow, canary)."""

    async def work(call: CallRecord) -> Response:
        host = replica_host()
        service = _service(host)
        tenant = search_tenant(call)
        settings = host.args.search
        if len(body.items) > settings.max_items_per_upsert:
            raise BadRequest(f"items: at most {settings.max_items_per_upsert} per request")
        limit = host.args.limits.max_input_chars
        for n, item in enumerate(body.items):
            for name, text in item.text.items():
                if len(text) > limit:
                    raise BadRequest(f"items.{n}.text.{name}: longer than {limit} characters")
        call.model, call.inputs = host.args.search_model(), len(body.items)
        await host.plane.admit(call, len(body.items), "items")
        items = [Item(i.id, i.text, i.attributes) for i in body.items]
        seq = await service.upsert(tenant, catalog, items)
        return json_response({"catalog": catalog, "upserted": len(items), "seq": seq})

    return await run_route(request, "/v1/catalogs/items", work)


@router.get(
    "/v1/catalogs/{catalog}/items/{item_id:path}",
    summary="Read one catalog item",
    response_model=ItemOut,
    responses=ERRORS,
)
async def get_item(request: Request, catalog: CatalogName, item_id: ItemId) -> Response:
    """The item as stored."""

    async def work(call: CallRecord) -> Response:
        host = replica_host()
        await host.plane.admit(call, 0)
        item = await _service(host).get(search_tenant(call), catalog, item_id)
        if item is None:
            raise NotFound("item: no such item in this catalog")
        return json_response(_item(item))

    return await run_route(request, "/v1/catalogs/items/get", work)


@router.delete(
    "/v1/catalogs/{catalog}/items/{item_id:path}",
    summary="Delete one catalog item",
    responses=responses(400, 404, example={"id": "sku-1042", "deleted": True}),
)
async def delete_item(request: Request, catalog: CatalogName, item_id: ItemId) -> Response:
    """Gone from search here at once and on every replica within 1 s."""

    async def work(call: CallRecord) -> Response:
        host = replica_host()
        await host.plane.admit(call, 0)
        if not await _service(host).delete(search_tenant(call), catalog, item_id):
            raise NotFound("item: no such item in this catalog")
        return json_response({"id": item_id, "deleted": True})

    return await run_route(request, "/v1/catalogs/items/delete", work)


def _catalog(info: CatalogInfo) -> dict[str, Any]:
    return {"name": info.name, "items": info.items, "created_at": info.created_at.isoformat(),
            "settings": info.settings}  # fmt: skip


@router.get(
    "/v1/catalogs",
    summary="Your tenant's catalogs",
    responses=responses(400, 404, example={"object": "list", "data": [_CATALOG]}),
)
async def list_catalogs(request: Request) -> Response:
    """Catalog names with item counts and settings."""

    async def work(call: CallRecord) -> Response:
        host = replica_host()
        await host.plane.admit(call, 0)
        service = _service(host)
        found = await asyncio.to_thread(service.store.catalogs, search_tenant(call))
        return json_response({"object": "list", "data": [_catalog(c) for c in found]})

    return await run_route(request, "/v1/catalogs", work)


@router.put(
    "/v1/catalogs/{catalog}",
    summary="Create a catalog or replace its settings",
    response_model=CatalogOut,
    responses=ERRORS,
)
async def configure_catalog(
    request: Request, catalog: CatalogName, body: CatalogSettingsIn
) -> Response:
    """Settings apply here at once and on every replica within 1 s; the catalog is
    created if it does not exist (an upsert creates one too, with no settings)."""

    async def work(call: CallRecord) -> Response:
        host = replica_host()
        await host.plane.admit(call, 0)
        service = _service(host)
        tenant = search_tenant(call)
        await service.configure(tenant, catalog, body.model_dump(exclude_none=True))
        found = await asyncio.to_thread(service.store.catalogs, tenant, catalog)
        info = found[0] if found else None
        if info is None:  # deleted by another writer since: nothing to show
            raise NotFound("catalog: no such catalog")
        return json_response(_catalog(info))

    return await run_route(request, "/v1/catalogs/settings", work)


SEARCH_ROUTE = "/v1/search"


@router.post(
    SEARCH_ROUTE,
    summary="Search a catalog",
    response_model=SearchOut,
    responses=responses(400, 404, 504),
)
async def search(request: Request, body: Annotated[SearchBody, Body()]) -> Response:
    """Ranked items of the catalog: vector similarity with the query, fused with BM25
    when `hybrid`, restricted by `filters`. `X-Model-Version` pins a version (with the
    right to pin); `X-Routing-Key` (else `user`) keeps a caller on one version."""
    return await run_route(
        request, SEARCH_ROUTE, lambda call: search_work(replica_host(), call, body, request.headers)
    )


async def serve_search(host: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """The route straight from ASGI (`deployments/http/hot.py`)."""
    await serve_json(host, scope, receive, send, SEARCH_ROUTE, SearchBody, search_work)


async def search_work(host: Any, call: CallRecord, body: SearchBody, headers: Headers) -> Response:
    """One search, as the caller `call`."""
    service = _service(host)
    tenant = search_tenant(call)
    settings = host.args.search
    if body.k > settings.max_k:
        raise BadRequest(f"k: at most {settings.max_k}")
    model = host.args.search_model()
    pinned = headers.get("x-model-version")
    key = (headers.get("x-routing-key") or body.user or "")[:ROUTING_KEY_MAX_CHARS]
    host.plane.authorize(call, model, pinned)
    version = index_version(host, service, tenant, body.catalog, model, pinned, key or None)
    vector = await host.plane.embed_version(call, model, version, [body.query], "query")
    hybrid = body.hybrid
    if hybrid is None:
        hybrid = service.catalog_settings(tenant, body.catalog).get(
            "hybrid", settings.hybrid_default
        )
    features = getattr(host, "features", None) if body.user else None
    started = time.perf_counter()
    try:
        result = await service.query(
            SearchQuery(
                tenant, body.catalog, f"{model}/{version}", vector[0], body.query,
                depth(body.k, features is not None), body.filters, hybrid, settings.fusion,
            )
        )  # fmt: skip
    except FilterError as e:
        raise BadRequest(str(e)) from e
    hits, personal = result.hits[: body.k], False
    if features is not None and body.user:
        got = await features.read(tenant, "user", body.user)
        profile = Profile.from_features(got.views)
        personal = not got.degraded and not profile.cold
        top = rrf_top() if hybrid and settings.fusion == "rrf" else 1.0
        hits = personalize(result.hits, profile, body.k, score_top=top) if personal else hits
    return json_response(
        {
            "object": "search.result",
            "catalog": body.catalog,
            "model": model,
            "version": version,
            "index": {"space": result.space, "seq": result.seq, "hybrid": hybrid,
                      "personalized": personal,
                      "search_ms": round((time.perf_counter() - started) * 1000, 3)},
            "data": [_hit(h) for h in hits],
        }
    )  # fmt: skip


def index_version(
    host: Any,
    service: SearchService,
    tenant: str,
    catalog: str,
    model: str,
    pinned: str | None,
    key: str | None,
) -> str:
    """The version whose index answers: the split's (or the pin), unless its index of
    this catalog is still being built. Then (no pin) any complete index the replica
    keeps: the most-weighted version's, then a shadow's or a canary's, then one a
    version that just left keeps for a while (a rollback's, while the version it
    returns to reloads), so search answers while another version's index fills."""
    chosen: str = host.router.choose(model, pinned, "X-Model-Version", key)
    ready = service.ready_spaces(tenant, catalog)
    if f"{model}/{chosen}" in ready:
        return chosen
    if pinned is not None:
        raise Unavailable(f"version: the index of {model}/{pinned} is still being built")
    prefix = f"{model}/"
    complete = [
        s.removeprefix(prefix)
        for s in service.complete_spaces(tenant, catalog)
        if s.startswith(prefix)
    ]
    if chosen in complete:
        return chosen
    weights: dict[str, int] = host.router.weights(model)
    # sorted is stable: among versions without traffic, kept before retained
    usable = sorted(complete, key=lambda v: -weights.get(v, 0))
    if not usable:
        raise _Building()
    return usable[0]


INDEXES_EXAMPLE = {
    "seq": 5187,
    "spaces": ["minilm/v1", "minilm/v2"],
    "pending": {"minilm/v1": 0, "minilm/v2": 310},
    "catalogs": [
        {"tenant_id": "acme", "catalog": "products", "items": 1200,
         "indexes": {"minilm/v1": {"vectors": 1200, "complete": True},
                     "minilm/v2": {"vectors": 890, "complete": False}}},
    ],
}  # fmt: skip


class _Building(ServekitError):
    status = 503
    code = "index_building"
    headers = {"Retry-After": "5"}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__("no version's index of this catalog is complete yet")


def indexes_doc(
    service: SearchService, call: CallRecord, stored: dict[tuple[str, str], int] | None = None
) -> dict[str, Any]:
    """What `/admin/v1/search/indexes` answers `call`: a tenant admin's catalogs and
    their pending items only; the change log's position (every tenant's writes) to the
    operator (and with auth off) alone. `stored`: the stored vectors of the space asked
    about, per (tenant, catalog), put on each catalog as `stored`."""
    tenant = _admin_tenant(call)
    catalogs = service.indexes(tenant)
    if stored is not None:
        for row in catalogs:
            row["stored"] = stored.get((row["tenant_id"], row["catalog"]), 0)
    doc = {"spaces": service.spaces, "pending": service.pending(tenant), "catalogs": catalogs}
    return doc if tenant is not None else {"seq": service.seq, **doc}


def _admin_tenant(call: CallRecord) -> str | None:
    """The tenant an admin route shows (None: every tenant's, for the operator)."""
    principal = call.principal
    return None if principal is None or principal.operator else principal.tenant_id


@router.get(
    "/admin/v1/search/indexes",
    summary="Catalog indexes and their completeness per version",
    responses=responses(400, 404, example=INDEXES_EXAMPLE),
    tags=["admin"],
)
async def search_indexes(
    request: Request,
    stored: Annotated[
        str | None,
        Query(
            max_length=400,
            description="A declared version (`model/version`) whose stored vectors to "
            "count: each catalog then has `stored`, what an index of that version "
            "reloads at once, without embedding (a rollback to a version whose index "
            "was dropped checks it).",
        ),
    ] = None,
) -> Response:
    """Per catalog (the operator: every tenant's; a tenant admin: its own), each kept
    version's vectors and whether its index is complete, as the answering replica holds
    them; and per version, the items still to embed (0: searches may use it)."""

    async def work(call: CallRecord) -> Response:
        host = replica_host()
        await admit_admin_call(host, call)  # as every admin call (it was not limited)
        service = _service(host)
        counts = None
        if stored is not None:
            if stored not in service.space_artifacts:
                known = ", ".join(sorted(service.space_artifacts)) or "none"
                raise BadRequest(f"stored: {stored[:80]!r} is not a declared version ({known})")
            counts = await asyncio.to_thread(service.stored_counts, stored, _admin_tenant(call))
        return json_response(indexes_doc(service, call, counts))

    return await run_route(request, "/admin/v1/search/indexes", work)
