"""The contract from outside: the running service serves the committed OpenAPI
document, and every response, errors included, says the API version."""

from __future__ import annotations

import json

import httpx
import pytest

from servekit.contract import DOCUMENT
from tests.conftest import auth_headers
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
    with service.client() as client:
        answers = [
            client.get("/v1/models", headers=auth_headers()),
            client.post(
                "/v1/embeddings", json={"model": "minilm", "input": "hi"}, headers=auth_headers()
            ),
            client.post("/v1/search", json={"catalog": "x"}, headers=auth_headers()),  # 400
            httpx.get(f"{service.base_url}/v1/models", timeout=30),  # 401: no key
            client.get("/v1/no-such-route", headers=auth_headers()),  # 404
        ]
    assert [a.status_code for a in answers] == [200, 200, 400, 401, 404]
    assert all(a.headers.get("API-Version") == "1" for a in answers), [
        dict(a.headers) for a in answers
    ]
