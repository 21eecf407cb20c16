"""The dashboard's metrics snapshot (servekit's series from several nodes' expositions,
summed over replicas and nodes, Ray's own metrics and extra labels left out), and the
auth gate answering its page without a key and its data only with one."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from configs.schema import AuthSettings
from deployments.http.auth import AuthGate, is_page, required_scope
from deployments.http.envelope import Envelope
from deployments.observability.snapshot import Snapshot
from deployments.tenancy.access import Access
from deployments.tenancy.admission import Admission
from deployments.tenancy.keys import KeyCache
from deployments.tenancy.usage import UsageMeter
from stores.ratelimit_embedded import EmbeddedLimiter
from stores.registry_sql import open_registry
from tests.unit.deployments.fakes import RequestRecorder

NODE_A = """\
# HELP ray_servekit_requests_total Requests answered by the ingress, by status code.
# TYPE ray_servekit_requests_total counter
ray_servekit_requests_total{Component="core_worker",application="servekit",code="200",\
deployment="Ingress",model="minilm",replica="r1",route="/v1/embeddings",version="v1"} 30.0
ray_servekit_requests_total{Component="core_worker",application="servekit",code="200",\
deployment="Ingress",model="minilm",replica="r2",route="/v1/embeddings",version="v1"} 12.0
ray_servekit_requests_total{application="servekit",code="503",deployment="Ingress",\
model="minilm",replica="r2",route="/v1/embeddings",version="v1"} 2.0
# HELP ray_servekit_request_duration_seconds Ingress latency per request.
# TYPE ray_servekit_request_duration_seconds histogram
ray_servekit_request_duration_seconds_bucket{le="0.01",model="minilm",replica="r1",\
route="/v1/search",version="v1"} 4.0
ray_servekit_request_duration_seconds_bucket{le="0.1",model="minilm",replica="r1",\
route="/v1/search",version="v1"} 9.0
ray_servekit_request_duration_seconds_bucket{le="+Inf",model="minilm",replica="r1",\
route="/v1/search",version="v1"} 10.0
ray_servekit_request_duration_seconds_count{model="minilm",replica="r1",route="/v1/search",\
version="v1"} 10.0
ray_servekit_request_duration_seconds_sum{model="minilm",replica="r1",route="/v1/search",\
version="v1"} 0.5
# HELP ray_servekit_tenant_requests_total Requests per tenant.
# TYPE ray_servekit_tenant_requests_total counter
ray_servekit_tenant_requests_total{code="200",replica="r1",tenant="acme"} 7.0
ray_servekit_tenant_requests_total{code="200",replica="r1",tenant="other"} 5.0
# HELP ray_tasks Ray's own.
# TYPE ray_tasks gauge
ray_tasks{State="RUNNING"} 3.0
# HELP ray_servekit_replicas 1 per live model replica.
# TYPE ray_servekit_replicas gauge
ray_servekit_replicas{model="minilm",version="v2"} 1.0
"""

NODE_B = """\
# TYPE ray_servekit_requests_total counter
ray_servekit_requests_total{code="200",model="minilm",replica="r3",route="/v1/embeddings",\
version="v1"} 8.0
# TYPE ray_servekit_request_duration_seconds histogram
ray_servekit_request_duration_seconds_bucket{le="0.01",model="minilm",replica="r3",\
route="/v1/search",version="v1"} 1.0
ray_servekit_request_duration_seconds_bucket{le="0.1",model="minilm",replica="r3",\
route="/v1/search",version="v1"} 1.0
ray_servekit_request_duration_seconds_bucket{le="+Inf",model="minilm",replica="r3",\
route="/v1/search",version="v1"} 2.0
ray_servekit_request_duration_seconds_count{model="minilm",replica="r3",route="/v1/search",\
version="v1"} 2.0
ray_servekit_request_duration_seconds_sum{model="minilm",replica="r3",route="/v1/search",\
version="v1"} 3.5
"""


def _snapshot(*texts: str) -> Snapshot:
    snapshot = Snapshot()
    for text in texts:
        snapshot.add_exposition(text)
    return snapshot


def test_counters_are_summed_over_replicas_and_nodes() -> None:
    doc = _snapshot(NODE_A, NODE_B).document()
    requests = {
        (c["labels"]["code"], c["labels"]["version"]): c["value"]
        for c in doc["counters"]
        if c["name"] == "servekit_requests_total"
    }
    assert requests == {("200", "v1"): 50.0, ("503", "v1"): 2.0}
    one = next(c for c in doc["counters"] if c["name"] == "servekit_requests_total")
    assert set(one["labels"]) == {"model", "version", "route", "code"}  # no replica, no node


def test_histogram_buckets_are_summed_and_cumulative() -> None:
    doc = _snapshot(NODE_A, NODE_B).document()
    (latency,) = doc["histograms"]
    assert latency["name"] == "servekit_request_duration_seconds"
    assert latency["labels"] == {"model": "minilm", "version": "v1", "route": "/v1/search"}
    assert latency["bounds"] == [0.01, 0.1]
    assert latency["counts"] == [5.0, 10.0]
    assert latency["count"] == 12.0
    assert latency["sum"] == 4.0


def test_only_servekits_series_of_the_dashboard_are_read() -> None:
    doc = _snapshot(NODE_A).document()
    names = {s["name"] for s in doc["counters"] + doc["histograms"]}
    assert names == {
        "servekit_requests_total",
        "servekit_request_duration_seconds",
        "servekit_tenant_requests_total",
    }


def test_a_tenant_sees_only_its_own_tenant_series() -> None:
    snapshot = _snapshot(NODE_A)
    snapshot.for_tenant("acme", lambda model: True)
    tenants = [
        c["labels"]["tenant"]
        for c in snapshot.document()["counters"]
        if c["name"] == "servekit_tenant_requests_total"
    ]
    assert tenants == ["acme"]
    assert any(c["name"] == "servekit_requests_total" for c in snapshot.document()["counters"])


def test_a_tenant_without_series_of_its_own_sees_no_pooled_one() -> None:
    """Tenants outside `auth.metrics_tenants` share the pooled series: none of it is
    one tenant's to see."""
    snapshot = _snapshot(NODE_A)
    snapshot.for_tenant(None, lambda model: True)
    names = {c["name"] for c in snapshot.document()["counters"]}
    assert "servekit_tenant_requests_total" not in names
    assert "servekit_requests_total" in names


def test_a_key_sees_only_the_models_it_may_use() -> None:
    snapshot = _snapshot(NODE_A)
    snapshot.for_tenant("acme", lambda model: model == "other-model")
    document = snapshot.document()
    assert all(c["labels"].get("model") in (None, "other-model") for c in document["counters"])
    assert all(h["labels"].get("model") in (None, "other-model") for h in document["histograms"])
    assert any(c["name"] == "servekit_tenant_requests_total" for c in document["counters"])
    everything = _snapshot(NODE_A)
    everything.for_tenant("acme", lambda model: model == "minilm")
    assert any(h["labels"].get("model") == "minilm" for h in everything.document()["histograms"])


NO_MODEL_NODE = """\
# TYPE ray_servekit_requests_total counter
ray_servekit_requests_total{code="401",model="-",replica="r1",route="-",version="-"} 900.0
ray_servekit_requests_total{code="201",model="-",replica="r1",\
route="/admin/v1/tenants/{id}/keys",version="-"} 4.0
ray_servekit_requests_total{code="200",model="minilm",replica="r1",route="/v1/embeddings",\
version="v1"} 8.0
# TYPE ray_servekit_request_duration_seconds histogram
ray_servekit_request_duration_seconds_bucket{le="0.01",model="-",replica="r1",\
route="/v1/catalogs/{name}/items",version="-"} 1.0
ray_servekit_request_duration_seconds_bucket{le="+Inf",model="-",replica="r1",\
route="/v1/catalogs/{name}/items",version="-"} 1.0
ray_servekit_request_duration_seconds_count{model="-",replica="r1",\
route="/v1/catalogs/{name}/items",version="-"} 1.0
ray_servekit_request_duration_seconds_sum{model="-",replica="r1",\
route="/v1/catalogs/{name}/items",version="-"} 0.005
"""


def test_a_key_for_every_model_sees_no_series_of_no_model() -> None:
    """Requests naming no model (catalog writes, events, admin calls, every tenant's
    401s and 403s) are pooled over tenants: the operator sees them, a tenant not."""
    snapshot = _snapshot(NO_MODEL_NODE)
    snapshot.for_tenant("acme", lambda model: True)
    document = snapshot.document()
    assert [c["labels"]["model"] for c in document["counters"]] == ["minilm"]
    assert document["histograms"] == []
    operator = _snapshot(NO_MODEL_NODE).document()
    assert {c["labels"]["model"] for c in operator["counters"]} == {"-", "minilm"}
    assert len(operator["histograms"]) == 1


def test_an_empty_exposition_is_an_empty_snapshot() -> None:
    assert _snapshot("").document() == {"counters": [], "histograms": []}


def test_the_page_answers_without_a_key_and_its_data_needs_admin() -> None:
    assert is_page("/dashboard")
    assert is_page("/dashboard/dashboard.js")
    assert not is_page("/dashboards")
    assert not is_page("/admin/v1/dashboard/state")
    assert required_scope("/admin/v1/dashboard/state") == "admin"
    assert required_scope("/admin/v1/dashboard/metrics") == "admin"


@dataclass
class _Host:
    access: Access
    envelope: Envelope = field(
        default_factory=lambda: Envelope(RequestRecorder(), logging.getLogger("test"))
    )


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_the_gate_lets_the_page_through_without_a_key_and_nothing_else(tmp_path: Path) -> None:
    log = logging.getLogger("test")
    registry = open_registry(f"sqlite:///{tmp_path / 'r.db'}")
    cache = KeyCache(registry, b"secret", "operator-token", 1.0, log)
    cache.refresh()
    access = Access(
        AuthSettings(), registry, cache, Admission(EmbeddedLimiter(), True, log),
        UsageMeter(registry, 1.0, log),
    )  # fmt: skip
    paths = ("/dashboard", "/dashboard/{name}", "/admin/v1/dashboard/state", "/dashboards")
    app = Starlette(routes=[Route(path, _ok) for path in paths])
    client = TestClient(AuthGate(app, _Host(access)))
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard/dashboard.js").status_code == 200
    assert client.get("/admin/v1/dashboard/state").status_code == 401
    assert client.get("/dashboards").status_code == 401
    operator = {"Authorization": "Bearer operator-token"}
    assert client.get("/admin/v1/dashboard/state", headers=operator).status_code == 200


def test_the_node_set_names_the_nodes_not_their_count() -> None:
    """Two snapshots are differenced only over the same nodes: a node that replaced
    another gives another name, the same nodes in another order the same one."""
    from deployments.http.dashboard import node_set

    a, b, c = ("node-a", "x"), ("node-b", "y"), ("node-c", "z")
    assert node_set([a, b]) == node_set([b, a])
    assert node_set([a, b]) != node_set([a, c])
    assert len(node_set([a])) == 16
