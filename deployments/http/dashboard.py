"""The dashboard: a page at `/dashboard` and the two admin routes it reads.

The page and its scripts are static files, answered without a key (a browser opening a
page cannot send one) and holding no data. Everything it shows comes from
`/admin/v1/dashboard/...`, called with the key the user enters: kept in the tab's
`sessionStorage`, sent only in the `Authorization` header, never in a URL.

- `state`: models and versions with their weights, rollout and shadow state (what
  `/v1/models/{name}` shows an admin), the application's deployments and replicas (as
  Serve's controller counts them), and today's usage per tenant from the registry.
- `metrics`: servekit's counters and histogram buckets summed over every node's metrics
  endpoint (`deployments/observability/snapshot.py`): right with any number of ingress
  replicas on any nodes, and nothing added to the request path. The page takes request
  rates, error ratios, hit rates and p95 from the difference of successive snapshots.

A tenant's admin key sees its own tenant's usage and series only; the operator all.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from deployments.dataplane import CallRecord
from deployments.http.hosted import admit_admin_call, replica_host, run_route
from deployments.http.inference import json_response
from deployments.http.route_docs import responses
from deployments.observability.snapshot import Snapshot
from deployments.tenancy.principal import Principal

REFRESH_S = 5.0  # how often the page reads both routes
CACHE_S = 2.0  # one replica scrapes the nodes at most this often, however many viewers
SCRAPE_TIMEOUT_S = 3.0
MAX_USAGE_TENANTS = 50
STATIC_DIR = Path(__file__).parent / "static"
# Path under /dashboard -> file and media type: nothing else is served from the folder.
PAGE_FILES = {
    "": ("dashboard.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "metrics.js": ("metrics.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("uPlot.min.css", "text/css; charset=utf-8"),
}
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter()


class DeploymentState(BaseModel):
    """One deployment of the application, as Serve's controller counts its replicas."""

    name: str
    status: str = Field(description="HEALTHY, UPDATING, UPSCALING, DOWNSCALING, UNHEALTHY.")
    running: int = Field(description="Replicas running.")
    replicas: int = Field(description="Replicas in any state (starting, stopping too).")


class TenantUsageToday(BaseModel):
    """A tenant's counted usage today (UTC), every model together."""

    tenant_id: str
    requests: int
    texts: int
    errors: int


class DashboardState(BaseModel):
    """What the dashboard shows that is not a time series."""

    at: float = Field(description="Server time, Unix seconds.")
    refresh_s: float = Field(description="How often the page reads this and the metrics.")
    application: str
    models: list[dict[str, Any]] = Field(description="As `GET /v1/models/{name}` shows them.")
    deployments: list[DeploymentState]
    day: str = Field(description="The UTC day of `usage`.")
    usage: list[TenantUsageToday] = Field(description="Most requests first.")


class CounterSeries(BaseModel):
    """A counter's total, summed over replicas and nodes."""

    name: str
    labels: dict[str, str]
    value: float


class HistogramSeries(BaseModel):
    """A histogram's cumulative bucket counts, summed over replicas and nodes."""

    name: str
    labels: dict[str, str]
    bounds: list[float] = Field(description="Upper bounds of the buckets (+Inf is `count`).")
    counts: list[float] = Field(description="Observations <= each bound.")
    count: float
    sum: float


class MetricsSnapshot(BaseModel):
    """Totals since each replica started: rates come from two snapshots' difference."""

    at: float = Field(description="Server time, Unix seconds.")
    nodes: int = Field(description="Nodes whose metrics endpoint answered.")
    nodes_failed: int = Field(description="Nodes whose endpoint did not answer in time.")
    node_set: str = Field(
        description="Names the set of nodes that answered (a digest of their ids): two "
        "snapshots' difference is a rate only when both have the same set, since a node "
        "that replaced another brings its own totals."
    )
    counters: list[CounterSeries]
    histograms: list[HistogramSeries]


STATE_EXAMPLE = {
    "at": 1764640000.0,
    "refresh_s": REFRESH_S,
    "application": "servekit",
    "models": [
        {
            "id": "minilm",
            "object": "model",
            "versions": [
                {"name": "v1", "weight": 90, "configured_weight": 90, "runtime": "onnx",
                 "device": "cpu", "deployment": "Ingress (inline)",
                 "recent": {"requests": 412, "rate_per_s": 6.87, "error_rate": 0.0,
                            "p95_latency_ms": 12.4}},
            ],
            "rollout": None,
            "shadow": {"version": "v2", "fraction": 0.1,
                       "pairs": {"v1->v2": {"requests": 40, "errors": 0, "dropped": 0,
                                            "mean_cosine": 0.998}}},
        }
    ],
    "deployments": [{"name": "Ingress", "status": "HEALTHY", "running": 2, "replicas": 2}],
    "day": "2026-12-02",
    "usage": [{"tenant_id": "acme", "requests": 1520, "texts": 8211, "errors": 3}],
}  # fmt: skip
METRICS_EXAMPLE = {
    "at": 1764640000.0,
    "nodes": 1,
    "nodes_failed": 0,
    "node_set": "5f1c0a9e2b7d4c38",
    "counters": [
        {"name": "servekit_requests_total",
         "labels": {"model": "minilm", "version": "v1", "route": "/v1/embeddings", "code": "200"},
         "value": 1520.0},
    ],
    "histograms": [
        {"name": "servekit_request_duration_seconds",
         "labels": {"model": "minilm", "version": "v1", "route": "/v1/embeddings"},
         "bounds": [0.005, 0.01, 0.025], "counts": [300.0, 1400.0, 1510.0],
         "count": 1520.0, "sum": 11.9},
    ],
}  # fmt: skip


# ---- the page ----------------------------------------------------------------------


@functools.cache
def _page_file(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def _page(name: str) -> Response:
    if name not in PAGE_FILES:
        raise HTTPException(404)
    file, media = PAGE_FILES[name]
    return Response(_page_file(file), media_type=media, headers=PAGE_HEADERS)


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> Response:
    """The page (static; it asks for a key and reads the admin routes below)."""
    return _page("")


@router.get("/dashboard/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    """The page's scripts and styles."""
    return _page(name)


# ---- its data ------------------------------------------------------------------------


async def _run(
    request: Request, route: str, work: Callable[[Principal | None], Awaitable[Any]]
) -> Response:
    """In the replica's envelope; the auth gate has checked the admin scope. With auth
    off (development) the caller is nobody and sees everything, as on `/v1/models`."""

    async def call_work(call: CallRecord) -> Response:
        # As every admin call: never from the tenant's traffic buckets, which a burst
        # of traffic empties when the dashboard is most needed.
        await admit_admin_call(replica_host(), call)
        return json_response(await work(call.principal))

    return await run_route(request, route, call_work)


@router.get(
    "/admin/v1/dashboard/state",
    summary="Dashboard: models, weights, rollout, replicas, today's usage",
    response_model=DashboardState,
    responses=responses(example=STATE_EXAMPLE),
    tags=["admin"],
)
async def dashboard_state(request: Request) -> Response:
    """Every model the key may use with its versions' weights (effective and
    configured), canary verdict and shadow divergence; the application's deployments
    with running replicas; today's usage per tenant (a tenant admin: its own)."""

    async def work(principal: Principal | None) -> Any:
        host = replica_host()
        names = [n for n in host.args.models if principal is None or principal.may_use(n)]
        application, deployments = await _deployments()
        hidden = {
            f"{model}-{version}"
            for model, spec in host.args.models.items()
            if model not in names
            for version in spec.versions
        }
        deployments = [d for d in deployments if d["name"] not in hidden]
        day = datetime.now(UTC).date()
        return {
            "at": time.time(),
            "refresh_s": REFRESH_S,
            "application": application,
            "models": [host.router.card(n, host.created, True, True) for n in names],
            "deployments": deployments,
            "day": day.isoformat(),
            "usage": await _usage_today(host.access, principal, day),
        }

    return await _run(request, "/admin/v1/dashboard/state", work)


@router.get(
    "/admin/v1/dashboard/metrics",
    summary="Dashboard: counters and histogram buckets of the whole service",
    response_model=MetricsSnapshot,
    responses=responses(example=METRICS_EXAMPLE),
    tags=["admin"],
)
async def dashboard_metrics(request: Request) -> Response:
    """servekit's request, latency, cache, shadow and tenant series, summed over every
    replica on every node (totals since each replica started; a replica that stops takes
    its part of a total with it). A tenant admin sees its own tenant's series (when
    `auth.metrics_tenants` names it) and the series of the models its key may use."""

    async def work(principal: Principal | None) -> Any:
        at, answered, failed = await _scrape()
        texts = [text for _, text in answered]
        snapshot = Snapshot()
        for text in texts:
            snapshot.add_exposition(text)
        if principal is not None and not principal.operator:
            named = replica_host().args.auth.metrics_tenants
            tenant = principal.tenant_id if principal.tenant_id in named else None
            snapshot.for_tenant(tenant, principal.may_use)
        nodes = {"nodes": len(texts), "nodes_failed": failed, "node_set": node_set(answered)}
        return {"at": at, **nodes, **snapshot.document()}

    return await _run(request, "/admin/v1/dashboard/metrics", work)


async def _deployments() -> tuple[str, list[dict[str, Any]]]:
    """This application's name and its deployments, from Serve's controller."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    application = serve.get_replica_context().app_name
    status = await _cached("serve-status", serve.status)
    app = status.applications.get(application)
    out = []
    for name, deployment in sorted((app.deployments if app else {}).items()):
        states = deployment.replica_states
        out.append(
            {
                "name": name,
                "status": str(getattr(deployment.status, "value", deployment.status)),
                "running": int(states.get(ReplicaState.RUNNING, 0)),
                "replicas": int(sum(states.values())),
            }
        )
    return application, out


async def _usage_today(access: Any, principal: Principal | None, day: Any) -> list[dict[str, Any]]:
    if access is None:
        return []
    await access.usage.flush()  # this replica's counts so far

    def read() -> list[dict[str, Any]]:
        tenants = [t.id for t in access.registry.list_tenants()]
        if principal is not None and not principal.operator:
            tenants = [t for t in tenants if t == principal.tenant_id]
        out = []
        for tenant in tenants[:MAX_USAGE_TENANTS]:
            rows = access.registry.usage(tenant, day, day)
            out.append(
                {
                    "tenant_id": tenant,
                    "requests": sum(r.requests for r in rows),
                    "texts": sum(r.texts for r in rows),
                    "errors": sum(r.errors for r in rows),
                }
            )
        return sorted(out, key=lambda u: (-u["requests"], u["tenant_id"]))

    return await asyncio.to_thread(read)


def node_set(answered: list[tuple[str, str]]) -> str:
    """A short name of the set of nodes in `answered` ((node id, text) pairs), the same
    for the same nodes in any order."""
    ids = "\n".join(sorted(node for node, _ in answered))
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


async def _scrape() -> tuple[float, list[tuple[str, str]], int]:
    """Every live node's metrics exposition (when taken, (node id, text) of each node
    that answered, how many did not)."""
    return await _cached("scrape", _scrape_nodes)  # type: ignore[no-any-return]


def _scrape_nodes() -> tuple[float, list[tuple[str, str]], int]:
    import ray

    urls = [
        (
            str(node["NodeID"]),
            f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics",
        )
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]
    answered, failed = [], 0
    for node, url in urls:  # a handful of nodes; each bounded by the timeout
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                answered.append((node, response.read().decode()))
        except OSError:
            failed += 1
    return time.time(), answered, failed


_CACHE: dict[str, tuple[float, Any]] = {}
_LOCKS: dict[str, asyncio.Lock] = {}


async def _cached(key: str, read: Callable[[], Any]) -> Any:
    """`read()` in a thread, at most once per `CACHE_S` per replica: viewers share it."""
    lock = _LOCKS.setdefault(key, asyncio.Lock())
    async with lock:
        hit = _CACHE.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        value = await asyncio.to_thread(read)
        _CACHE[key] = (time.monotonic(), value)
        return value
