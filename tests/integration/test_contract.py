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
    assert json.loads(json.dumps(served.json(), sort_keys=True)) == json.loads(DOCUMENT.read_text())


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
