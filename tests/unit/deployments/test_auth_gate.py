"""The ASGI gate ahead of every route, on a bare Starlette app (no Ray)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from configs.schema import AuthSettings
from deployments.http.auth import PRINCIPAL, AuthGate, bearer, model_in_path, required_scope
from deployments.http.envelope import Envelope
from deployments.tenancy.access import Access
from deployments.tenancy.admission import Admission
from deployments.tenancy.keys import KeyCache
from deployments.tenancy.usage import UsageMeter
from stores.ratelimit_embedded import EmbeddedLimiter
from stores.registry_sql import open_registry
from stores.tenants import RateLimits, issue_key
from tests.unit.deployments.fakes import RequestRecorder

SECRET = b"gate-secret"
LOG = logging.getLogger("test")


@dataclass
class Host:
    access: Access | None
    metrics: RequestRecorder = field(default_factory=RequestRecorder)

    @property
    def envelope(self) -> Envelope:
        return Envelope(self.metrics, LOG)


async def _who(request: Request) -> JSONResponse:
    principal = request.scope.get(PRINCIPAL)
    return JSONResponse({"tenant": principal.tenant_id if principal else None})


APP = Starlette(
    routes=[
        Route(path, _who, methods=["GET", "POST", "PUT", "DELETE"])
        for path in ("/v1/embeddings", "/v1/models", "/v1/models/{m}", "/v2/health/ready",
                     "/v2/models/{m}/infer", "/admin/v1/tenants", "/v1/usage",
                     "/v1/catalogs/{c}/items", "/v1/catalogs/{c}/items/{i}")
    ]
)  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    client, made, _ = _gate(tmp_path)
    return client, made


def _gate(tmp_path: Path) -> tuple[TestClient, dict[str, str], Host]:
    """A gate over a registry with one tenant and three keys, and its host."""
    registry = open_registry(f"sqlite:///{tmp_path / 'r.db'}")
    registry.create_tenant("Acme", RateLimits(), "acme")
    now = datetime.now(UTC)
    made = {
        name: issue_key(registry, SECRET, "acme", name=name, scopes=frozenset(scopes),
                        models=models, now=now)[0]
        for name, scopes, models in (
            ("embed", {"embed"}, None),
            ("one-model", {"embed"}, frozenset({"a"})),
            ("usage", {"usage"}, None),
            ("search", {"search"}, None),
            ("catalog", {"search", "catalog"}, None),
        )
    }  # fmt: skip
    cache = KeyCache(registry, SECRET, "operator-token", 1.0, LOG)
    cache.refresh()
    access = Access(
        AuthSettings(exempt_paths=["/v2/health/ready"]),
        registry,
        cache,
        Admission(EmbeddedLimiter(), True, LOG),
        UsageMeter(registry, 1.0, LOG),
    )
    host = Host(access)
    return TestClient(AuthGate(APP, host)), made, host


def _get(client: TestClient, path: str, key: str | None, method: str = "GET") -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.request(method, path, headers=headers).status_code


def test_probes_are_exempt_and_everything_else_needs_a_key(
    keys: tuple[TestClient, dict[str, str]],
) -> None:
    client, _ = keys
    assert _get(client, "/v2/health/ready", None) == 200
    for path in ("/v1/embeddings", "/v1/models", "/admin/v1/tenants", "/v1/usage"):
        r = client.get(path)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
    r = client.post("/v2/models/a/infer")
    assert r.status_code == 401
    assert set(r.json()) == {"error"}  # the inference protocol's shape on /v2


def test_scopes_and_models(keys: tuple[TestClient, dict[str, str]]) -> None:
    client, made = keys
    assert client.post(
        "/v1/embeddings", headers={"Authorization": f"Bearer {made['embed']}"}
    ).json() == {"tenant": "acme"}
    assert _get(client, "/v1/usage", made["embed"]) == 403
    assert _get(client, "/v1/usage", made["usage"]) == 200
    assert _get(client, "/v1/embeddings", made["usage"], "POST") == 403
    assert _get(client, "/v2/models/a/infer", made["one-model"], "POST") == 200
    assert _get(client, "/v2/models/b/infer", made["one-model"], "POST") == 403
    assert _get(client, "/v1/models/b", made["one-model"]) == 403
    assert _get(client, "/v1/models", made["one-model"]) == 200
    assert _get(client, "/admin/v1/tenants", made["embed"]) == 403
    assert _get(client, "/admin/v1/tenants", "operator-token") == 200


def test_a_search_key_reads_catalogs_and_a_catalog_key_writes_them(
    keys: tuple[TestClient, dict[str, str]],
) -> None:
    """A key with `search` alone (one a browser may hold to search) reads catalog items
    but neither changes nor deletes them: catalog writes need `catalog`."""
    client, made = keys
    item = "/v1/catalogs/shoes/items/a"
    assert _get(client, item, made["search"]) == 200
    assert _get(client, item, made["search"], "HEAD") == 200
    for method, path in (("PUT", "/v1/catalogs/shoes/items"), ("DELETE", item)):
        r = client.request(method, path, headers={"Authorization": f"Bearer {made['search']}"})
        assert r.status_code == 403
        assert r.json()["error"]["message"] == (
            "scope: this route needs the 'catalog' scope, which this API key lacks"
        )
        assert _get(client, path, made["catalog"], method) == 200
    assert _get(client, item, made["embed"]) == 403  # reading still needs search


def test_a_403_names_the_scope_the_route_needs(keys: tuple[TestClient, dict[str, str]]) -> None:
    """A key without a route's scope was told only "this API key may not do that": the
    403 names the scope (documented per route, so it gives nothing away) and what to
    ask for. A model outside the key's rights says the same whether it exists."""
    client, made = keys

    def message(path: str, key: str, method: str = "GET") -> str:
        r = client.request(method, path, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        return str(error["message"] if isinstance(error, dict) else error)

    for path, method, key, scope in (
        ("/v1/usage", "GET", "embed", "usage"),
        ("/v1/embeddings", "POST", "usage", "embed"),
        ("/v2/models/a/infer", "POST", "usage", "embed"),
        ("/admin/v1/tenants", "GET", "embed", "admin"),
    ):
        expected = f"scope: this route needs the '{scope}' scope, which this API key lacks"
        assert message(path, made[key], method) == expected, path
    assert (
        message("/v1/models/b", made["one-model"])
        == message("/v2/models/no-such-model/infer", made["one-model"], "POST")
        == "model: this API key may not call this model"
    )


def test_refusals_are_counted(tmp_path: Path) -> None:
    """A 401 or 403 shows in the requests series (model, version and route `-`: the
    path is the caller's), a 403 in its tenant's too; what passes is the app's to count."""
    client, made, host = _gate(tmp_path)
    assert _get(client, "/v1/embeddings/../../anything", None, "POST") == 401
    assert _get(client, "/v1/usage", made["embed"]) == 403
    assert _get(client, "/v1/usage", made["usage"]) == 200
    assert host.metrics.requests == [("-", "-", "-", 401), ("-", "-", "-", 403)]
    assert host.metrics.tenants == [("acme", 403)]


def test_without_access_the_gate_passes_everything() -> None:
    client = TestClient(AuthGate(APP, Host(None)))
    assert client.get("/v1/models").json() == {"tenant": None}


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/v1/embeddings", "embed"),
        ("/v1/search", "search"),
        ("/v1/catalogs/shoes/items", "search"),
        ("/v1/recommendations", "recommend"),
        ("/v1/events", "events"),
        ("/v1/usage", "usage"),
        ("/admin/v1/tenants/x/keys", "admin"),
        ("/v2/models/m/versions/v1/infer", "embed"),
        ("/v1/models", None),
        ("/v1/embeddingsX", None),
        ("/v2/models/m", None),
    ],
)
def test_route_scopes(path: str, scope: str | None) -> None:
    assert required_scope(path) == scope


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v1/catalogs", "search"),
        ("HEAD", "/v1/catalogs/shoes/items/a", "search"),
        ("PUT", "/v1/catalogs/shoes", "catalog"),
        ("PUT", "/v1/catalogs/shoes/items", "catalog"),
        ("DELETE", "/v1/catalogs/shoes/items/a", "catalog"),
        ("POST", "/v1/catalogs/shoes/items", "catalog"),
        ("POST", "/v1/search", "search"),
        ("DELETE", "/admin/v1/tenants/x/keys/k", "admin"),
    ],
)
def test_catalog_writes_need_their_own_scope(method: str, path: str, scope: str) -> None:
    assert required_scope(path, method) == scope


def test_model_in_path_and_bearer() -> None:
    assert model_in_path("/v2/models/m/versions/v1/infer") == "m"
    assert model_in_path("/v1/models/m") == "m"
    assert model_in_path("/v1/models") is None
    assert bearer({"headers": [(b"authorization", b"Bearer abc")]}) == "abc"
    assert bearer({"headers": [(b"authorization", b"bearer  abc ")]}) == "abc"
    assert bearer({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert bearer({"headers": []}) is None
