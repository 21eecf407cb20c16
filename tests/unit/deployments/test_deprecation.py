"""Deprecating a route: it keeps answering, with `Deprecation` (RFC 9745), `Sunset`
(RFC 8594) and `Link` headers on every response, refusals before routing included, and
the OpenAPI document marks it; every response says the API version."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import HTTPException
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.http.api import ServekitAPI
from deployments.http.deprecation import declare, deprecated, deprecated_field

DEPRECATED_AT = "@1768435200"  # 2026-01-15T00:00:00Z
SUNSET = "Thu, 01 Jul 2027 00:00:00 GMT"
MIGRATE = "https://docs.example.com/migrate/old"
POLICY = "https://docs.example.com/sunset-policy"


class Thing(BaseModel):
    """A body with a deprecated field."""

    name: str
    colour: str | None = Field(
        None, json_schema_extra=deprecated_field(on="2026-01-15", sunset="2027-07-01")
    )


class KeyRequired:
    """Refuses `/v1/old` without a key before any routing, as the auth gate does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1/old"
            and b"authorization" not in headers
        ):
            await JSONResponse({"error": "no key"}, 401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _app() -> ServekitAPI:
    app = ServekitAPI(title="test", version="1")

    @deprecated(on="2026-01-15", sunset="2027-07-01", link=MIGRATE, sunset_link=POLICY)
    @app.get("/v1/old")
    async def old(fail: bool = False) -> dict[str, bool]:
        if fail:
            raise HTTPException(404, "gone")
        return {"ok": True}

    @app.post("/v1/new")
    async def new(body: Thing) -> dict[str, str]:
        return {"name": body.name}

    app.add_middleware(KeyRequired)
    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app())


KEY = {"Authorization": "Bearer sk-test"}


def test_a_deprecated_route_says_when_and_where_to_go(client: TestClient) -> None:
    answer = client.get("/v1/old", headers=KEY)
    assert answer.status_code == 200
    assert answer.headers["Deprecation"] == DEPRECATED_AT
    assert answer.headers["Sunset"] == SUNSET
    assert answer.headers["Link"] == f'<{MIGRATE}>; rel="deprecation", <{POLICY}>; rel="sunset"'
    assert answer.headers["API-Version"] == "1"


def test_its_errors_and_refusals_before_routing_say_so_too(client: TestClient) -> None:
    failed = client.get("/v1/old", params={"fail": "true"}, headers=KEY)
    refused = client.get("/v1/old")  # refused by the middleware before any route matched
    assert [failed.status_code, refused.status_code] == [404, 401]
    for answer in (failed, refused):
        assert answer.headers["Deprecation"] == DEPRECATED_AT
        assert answer.headers["Sunset"] == SUNSET
        assert answer.headers["API-Version"] == "1"


def test_other_routes_say_the_version_and_nothing_of_deprecation(client: TestClient) -> None:
    answers = [
        client.post("/v1/new", json={"name": "x"}),
        client.get("/v1/no-such-route"),
        client.put("/v1/new", json={"name": "x"}),
        client.get("/openapi.json"),
    ]
    assert [a.status_code for a in answers] == [200, 404, 405, 200]
    for answer in answers:
        assert answer.headers["API-Version"] == "1"
        assert "Deprecation" not in answer.headers
        assert "Sunset" not in answer.headers
    assert answers[0].headers.get_list("API-Version") == ["1"]  # once, never twice


def test_the_document_marks_the_route_and_the_field() -> None:
    doc: dict[str, Any] = _app().openapi()
    old = doc["paths"]["/v1/old"]["get"]
    assert old["deprecated"] is True
    assert old["x-deprecation"] == {"on": "2026-01-15", "sunset": "2027-07-01", "link": MIGRATE}
    assert {"Deprecation", "Sunset", "Link", "API-Version"} <= set(
        old["responses"]["200"]["headers"]
    )
    new = doc["paths"]["/v1/new"]["post"]
    assert "deprecated" not in new
    colour = doc["components"]["schemas"]["Thing"]["properties"]["colour"]
    assert colour["deprecated"] is True
    assert colour["x-deprecation"] == {"on": "2026-01-15", "sunset": "2027-07-01"}


def test_a_declaration_that_makes_no_sense_is_refused() -> None:
    with pytest.raises(ValueError, match="sunset 2026-01-01 is not after 2026-01-15"):
        declare(on="2026-01-15", sunset="2026-01-01")
    with pytest.raises(ValueError, match="is not a URL"):
        declare(on="2026-01-15", link="docs/migrate")
    with pytest.raises(ValueError, match="Invalid isoformat"):
        declare(on="15/01/2026")
