"""The contract from outside: the running service serves the committed OpenAPI
document, and every response, errors included, says the API version."""

from __future__ import annotations

import json

import httpx
import pytest

from servekit.contract import DOCUMENT
from tests.conftest import auth_headers, operator_headers
from tests.integration.conftest import Service

pytestmark = [pytest.mark.integration]


def test_the_service_serves_the_committed_document(service: Service) -> None:
    with service.client() as client:
        served = client.get("/openapi.json")
    assert served.status_code == 200
    committed = json.loads(DOCUMENT.read_text())
    assert _differences(served.json(), committed) == []


def _differences(a: object, b: object, where: str = "") -> list[str]:
    """Where two documents differ (JSON pointers), the first 10."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{where}/{key}")
        return out[:10]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for n, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _differences(x, y, f"{where}/{n}")][:10]  # fmt: skip
    return [] if a == b else [f"{where}: served {a!r:.80} != committed {b!r:.80}"]


def test_every_response_says_the_api_version(service: Service) -> None:
    """Successes, errors from every layer (the route, validation, the auth gate, the
    router's 404 and 405, the body limit) and the probes all say `API-Version: 1`, and
    only an operation the document marks deprecated says `Deprecation`."""
    key, operator = auth_headers(), operator_headers()
    with service.client() as client:
        answers = {
            "GET /v1/models": client.get("/v1/models", headers=key),
            "POST /v1/embeddings": client.post(
                "/v1/embeddings", json={"model": "minilm", "input": "hi"}, headers=key
            ),
            "POST /v1/search": client.post("/v1/search", json={"catalog": "x"}, headers=key),
            "GET /v1/usage": client.get("/v1/usage", params={"start": "x"}, headers=key),
            "GET /admin/v1/tenants": client.get("/admin/v1/tenants", headers=operator),
            "GET /v1/models/{name}": httpx.get(f"{service.base_url}/v1/models/minilm", timeout=30),
            "POST /v1/models": client.post("/v1/models", headers=key),
            "GET /v1/no-such-route": client.get("/v1/no-such-route", headers=key),
            "POST /v1/embeddings (large)": client.post(
                "/v1/embeddings", content=b"x" * 300_000, headers=key
            ),
            "GET /v2/health/live": client.get("/v2/health/live"),
            "GET /openapi.json": client.get("/openapi.json"),
        }
    statuses = {where: a.status_code for where, a in answers.items()}
    assert statuses == {
        "GET /v1/models": 200,
        "POST /v1/embeddings": 200,
        "POST /v1/search": 400,  # a required field missing
        "GET /v1/usage": 400,  # not a date
        "GET /admin/v1/tenants": 200,
        "GET /v1/models/{name}": 401,  # no key
        "POST /v1/models": 405,
        "GET /v1/no-such-route": 404,
        "POST /v1/embeddings (large)": 413,
        "GET /v2/health/live": 200,
        "GET /openapi.json": 200,
    }
    assert {w: a.headers.get_list("API-Version") for w, a in answers.items()} == {
        w: ["1"] for w in answers
    }
    committed = json.loads(DOCUMENT.read_text())
    for where, answer in answers.items():
        method, path = where.split(" ")[:2]
        operation = committed["paths"].get(path, {}).get(method.lower(), {})
        assert ("Deprecation" in answer.headers) == bool(operation.get("deprecated")), where
        assert "Sunset" not in answer.headers or operation.get("deprecated"), where
