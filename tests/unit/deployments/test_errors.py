"""How the FastAPI routes answer what is wrong with a call before their work runs, on
the service's app outside a Serve replica (no Ray)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deployments.dataplane import CallRecord
from deployments.http.api import DEFAULT_BODY_LIMIT
from deployments.http.envelope import BodyLimit, Envelope, read_body
from tests.unit.deployments.fakes import RequestRecorder

JSON = {"content-type": "application/json"}
OVER = f"body: larger than the {DEFAULT_BODY_LIMIT}-byte limit"


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


def _chunks(total: int, size: int = 1_000_000) -> Iterator[bytes]:
    """A body sent without `Content-Length` (chunked), `total` bytes in all."""
    while total > 0:
        yield b" " * min(size, total)
        total -= size


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/events"), ("PUT", "/v1/catalogs/c/items"), ("PUT", "/v1/catalogs/c")],
)
def test_a_body_fastapi_parses_is_bounded_by_the_limit(
    client: TestClient, method: str, path: str
) -> None:
    """Refused from `Content-Length` before reading (it had been parsed and validated,
    and `PUT /v1/catalogs/c` answered `pad: unknown field`)."""
    body = b'{"pad": "' + b"x" * DEFAULT_BODY_LIMIT + b'"}'
    got = client.request(method, path, content=body, headers=JSON)
    assert got.status_code == 413
    assert _error(got) | {"request_id": "-"} == {
        "code": "payload_too_large",
        "message": OVER,
        "request_id": "-",
    }


def test_a_chunked_body_is_refused_while_it_streams(client: TestClient) -> None:
    got = client.post("/v1/events", content=_chunks(DEFAULT_BODY_LIMIT + 1), headers=JSON)
    assert "content-length" not in got.request.headers
    assert got.status_code == 413
    assert _error(got)["message"] == OVER


@pytest.mark.parametrize(
    "body", [b'{"catalog": "\xff"}', b"[" * 100_000, b'{"events": [{"user": "\xc3("}]}']
)
def test_a_body_that_is_not_json_is_named_as_the_body(client: TestClient, body: bytes) -> None:
    """Not UTF-8, or nested past what the JSON reader takes: what the hot routes say
    (FastAPI's own words had been "There was an error parsing the body")."""
    got = client.post("/v1/events", content=body, headers=JSON)
    assert got.status_code == 400
    assert _error(got)["message"] == "body: not valid JSON"


def _hand_read_app(limit: int) -> Starlette:
    """A route reading its body by hand in an envelope (as OIP inference does), behind
    the layer."""
    envelope = Envelope(RequestRecorder(), logging.getLogger("test"))

    async def route(request: Request) -> Response:
        async def work(call: CallRecord) -> Response:
            # A limit far above the layer's: the layer's refusal is what is seen.
            body = await read_body("", request.stream(), 10 * limit)
            return Response(str(len(body)))

        return await envelope.run("rid", "/v2/models/infer", True, work)

    app = Starlette(routes=[Route("/v2/models/m/infer", route, methods=["POST"])])
    app.add_middleware(BodyLimit, limit=lambda: limit)
    return app


def test_a_body_read_by_hand_is_refused_in_its_routes_shape() -> None:
    client = TestClient(_hand_read_app(1024))
    got = client.post("/v2/models/m/infer", content=_chunks(1025, 100))
    assert got.status_code == 413
    assert got.json() == {"error": "body: larger than the 1024-byte limit"}
    got = client.post("/v2/models/m/infer", content=b"x" * 1025)
    assert got.status_code == 413
    assert client.post("/v2/models/m/infer", content=_chunks(1024, 100)).text == "1024"
    assert client.post("/v2/models/m/infer", content=b"x" * 1024).text == "1024"


@pytest.mark.parametrize("declared", ["²", "١٢", "", "12x"])
def test_a_length_that_is_not_ascii_digits_is_left_to_the_stream(declared: str) -> None:
    """`"²".isdigit()` is true and `int("²")` raises: only ASCII digits are read as the
    declared length; anything else is counted while streaming."""

    async def stream() -> AsyncIterator[bytes]:
        yield b"abc"

    assert asyncio.run(read_body(declared, stream(), 10)) == b"abc"
