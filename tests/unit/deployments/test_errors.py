"""How the FastAPI routes answer what is wrong with a call before their work runs, on
the service's app outside a Serve replica (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    import deployments.ingress  # noqa: F401 - declares the routes on the app
    from deployments.http.api import api

    return TestClient(api)


def _error(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_wrong_method_names_the_methods_the_route_takes(client: TestClient) -> None:
    got = client.get("/v1/events")
    assert got.status_code == 405
    assert got.headers["allow"] == "POST"
    assert _error(got)["code"] == "method_not_allowed"


def test_a_long_unknown_field_comes_back_cut_short(client: TestClient) -> None:
    body = b'{"items": [{"id": "x", "text": {"t": "a"}, "' + b"k" * 100_000 + b'": 1}]}'
    got = client.put("/v1/catalogs/c/items", content=body, headers=JSON)
    assert got.status_code == 400
    message = _error(got)["message"]
    assert message == f"items.0.{'k' * 64}: unknown field"


def test_an_attribute_with_a_lone_surrogate_is_refused(client: TestClient) -> None:
    """Stored, it made every answer holding the item a 500 (no UTF-8 writer takes it)."""
    body = rb'{"items": [{"id": "x", "text": {"t": "a"}, "attributes": {"tags": ["x\udc00"]}}]}'
    got = client.put("/v1/catalogs/c/items", content=body, headers=JSON)
    assert got.status_code == 400
    assert _error(got)["message"].startswith("items.0.attributes.tags: valid Unicode")
