"""`POST /v1/recommendations` (scope `recommend`): the items one end user of the calling
key's tenant is most likely to engage with next, from one of the tenant's catalogs.

The recommender version is chosen as any model's: the traffic split, sticky by the user
(or `X-Routing-Key`), or pinned with `X-Model-Version`; while a version's index of the
catalog is still being built, the most-weighted version whose index is complete answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from deployments.dataplane import CallRecord
from deployments.errors import BadRequest, NotFound
from deployments.http.embeddings import ROUTING_KEY_MAX_CHARS
from deployments.http.fields import StoredText
from deployments.http.hosted import replica_host, run_route
from deployments.http.hot import serve_json
from deployments.http.inference import json_response
from deployments.http.route_docs import example, responses
from deployments.http.search_routes import (
    CATALOG_PATTERN,
    SearchHit,
    index_version,
    search_tenant,
)
from deployments.pipelines.filters import FilterError
from deployments.pipelines.recommend import (
    CatalogMissing,
    Recommendations,
    RecommendQuery,
    RecommendService,
)
from deployments.routing.shadow import NoRoom

router = APIRouter(tags=["recommendations"])

_HIT = {"id": "sku-1042", "score": 0.8312, "text": {"title": "Trail running shoe"},
        "attributes": {"category": "shoes", "brand": "Northpeak", "price": 89.0}}  # fmt: skip
_ANSWER = {"object": "recommendations", "catalog": "products", "user": "u-829",
           "model": "recommender", "version": "v1", "source": "model", "degraded": False,
           "index": {"space": "recommender/v1", "candidates": 50}, "data": [_HIT]}  # fmt: skip


class RecommendBody(BaseModel):
    """Whom to recommend for, from which catalog, how many, within which filters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=example(
            {"user": "u-829", "k": 5, "filters": {"in_stock": True}, "exclude_seen": True},
            {"user": "u-829", "catalog": "products", "context": {"item": "sku-77"}},
        ),
    )

    user: StoredText = Field(
        min_length=1, max_length=256, description="The end user (as in events)."
    )
    k: int = Field(10, ge=1, description="How many items (at most `recommendations.max_k`).")
    catalog: str | None = Field(
        None,
        pattern=CATALOG_PATTERN,
        description="The catalog to recommend from; default: the tenant's only catalog.",
    )
    filters: dict[str, Any] | None = Field(
        None, description="As for search: equality, {gte, gt, lte, lt}, {in}, {any}."
    )
    exclude_seen: bool = Field(True, description="Leave out items the user touched recently.")
    context: dict[str, str] | None = Field(
        None,
        max_length=16,
        description="Where the user is: `item` (the item being looked at) steers the "
        "candidates towards it (a user without history gets the items most like it); "
        "other keys are ignored.",
    )


class RecommendOut(BaseModel):
    """Ranked items, and the versions and sources that produced them."""

    model_config = ConfigDict(json_schema_extra=example(_ANSWER))

    object: str
    catalog: str
    user: str
    model: str
    version: str
    source: str = Field(description="model: the two stages; popular: cold start or degraded.")
    degraded: bool = Field(
        description="The feature store did not answer: popular items, or model ranks made "
        "without the candidates' popularity."
    )
    index: dict[str, Any]
    data: list[SearchHit]


def _service(host: Any) -> RecommendService:
    service: RecommendService | None = getattr(host, "recommend", None)
    if service is None:
        raise NotFound("no such route (no recommender is configured)")
    return service


ROUTE = "/v1/recommendations"


@router.post(
    ROUTE,
    summary="Recommend items to a user",
    response_model=RecommendOut,
    responses=responses(400, 404),
)
async def recommend(request: Request, body: Annotated[RecommendBody, Body()]) -> Response:
    """The two-stage recommender over the user's online features: candidates from the
    version's item index, reordered by its ranker; a user without history (or any user
    while the feature store is down, flagged `degraded`) gets the tenant's popular
    items. `filters` hold for every answer."""
    return await run_route(
        request, ROUTE, lambda call: recommend_work(replica_host(), call, body, request.headers)
    )


async def serve_recommend(host: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """The route straight from ASGI (`deployments/http/hot.py`)."""
    await serve_json(host, scope, receive, send, ROUTE, RecommendBody, recommend_work)


async def recommend_work(
    host: Any, call: CallRecord, body: RecommendBody, headers: Headers
) -> Response:
    """One recommendation, as the caller `call`."""
    service = _service(host)
    tenant = search_tenant(call)
    settings = host.args.recommendations
    if body.k > settings.max_k:
        raise BadRequest(f"k: at most {settings.max_k}")
    catalog = body.catalog or _only_catalog(host, tenant)
    model = service.model
    pinned = headers.get("x-model-version")
    key = (headers.get("x-routing-key") or body.user)[:ROUTING_KEY_MAX_CHARS]
    host.plane.authorize(call, model, pinned)
    call.model, call.inputs = model, 1
    await host.plane.admit(call, 0)
    version = index_version(host, host.search, tenant, catalog, model, pinned, key)
    call.version = version
    query = RecommendQuery(
        tenant, catalog, body.user, version, body.k, body.filters, body.exclude_seen,
        (body.context or {}).get("item"),
    )  # fmt: skip
    started = time.perf_counter()
    ok: bool | None = False  # None: the caller went away, nothing to judge the version by
    try:
        got = await service.recommend(query)
        ok = True
    except FilterError as e:
        ok = True  # the caller's mistake, not the version's
        raise BadRequest(str(e)) from e
    except CatalogMissing as e:
        ok = True
        raise NotFound(f"catalog: no catalog named {e.args[0]!r}") from e
    except asyncio.CancelledError:
        # A client that times out or hangs up says nothing of the version: no sample (an
        # embedding call records none either), so it never counts against a canary.
        ok = None
        raise
    finally:  # for status and the canary watch, as any version's calls
        if ok is not None:
            host.router.record(model, version, ok, time.perf_counter() - started)
    service.served(version, got)
    if pinned is None:
        _mirror(host, service, query, [h.item.id for h in got.hits])
    return json_response(
        {"object": "recommendations", "catalog": catalog, "user": body.user, "model": model,
         "version": version, "source": got.source, "degraded": got.degraded,
         "index": {"space": service.space(version), "candidates": got.candidates,
                   "timings_ms": got.timings_ms},
         "data": [{"id": h.item.id, "score": round(h.score, 6), "text": h.item.text,
                   "attributes": h.item.attributes} for h in got.hits]}
    )  # fmt: skip


def _mirror(host: Any, service: RecommendService, query: RecommendQuery, ids: list[str]) -> None:
    """A sampled copy to the recommender's shadow version (once its index of the catalog
    is complete), off the caller's path; the agreement is the share of these items the
    shadow also answers.

    Copies only use room nobody waits for: a recommendation worker process that is up
    with nothing waiting (`spare`). They never run on the Ingress's event loop, where
    callers' requests run: without a worker (`worker_process: false`, or none up yet),
    or once the idle one got busy or gave no answer, the copy is dropped and counted."""

    async def run(shadow: str) -> Recommendations:
        worker = _idle_worker(service)
        if worker is None:
            raise NoRoom
        got: Recommendations | None = await worker.recommend(
            replace(query, version=shadow), copy=True
        )
        if got is None:  # restarting, stalled, or it has not indexed the catalog yet
            raise NoRoom
        return got

    def spare(shadow: str) -> bool:
        return _idle_worker(service) is not None

    def agreement(answer: Recommendations) -> list[float]:
        return [_agreement(ids, [h.item.id for h in answer.hits])]

    def ready(shadow: str) -> bool:
        return service.space(shadow) in host.search.ready_spaces(query.tenant, query.catalog)

    host.router.shadow.maybe_mirror(
        service.model, query.version, run, agreement, ready=ready, spare=spare
    )


def _agreement(primary: list[str], shadow: list[str]) -> float:
    """The share of the primary's items the shadow answers too; 1 when both answer
    nothing (a filter no item passes: they agree), 0 when only one does."""
    if not primary:
        return 0.0 if shadow else 1.0
    return len(set(primary) & set(shadow)) / len(primary)


def _idle_worker(service: RecommendService) -> Any:
    """A recommendation worker of this replica that is up with no request waiting for
    it (None: every one is busy, down or not started, or there is none)."""
    worker = service.worker
    if worker is None:
        return None
    for one in getattr(worker, "workers", None) or [worker]:  # a pool, or a worker
        if getattr(one, "up", False) and getattr(one, "waiting", 1) == 0:
            return one
    return None


def _only_catalog(host: Any, tenant: str) -> str:
    names: list[str] = host.search.catalogs_of(tenant)
    if len(names) == 1:
        return names[0]
    if not names:
        raise NotFound("catalog: this tenant has no catalog yet")
    raise BadRequest(f"catalog: required, the tenant has {len(names)} catalogs")
