"""The ASGI shortcut of the hot routes (`POST /v1/embeddings`, `/v1/search`,
`/v1/recommendations`): which calls it takes, which it leaves to FastAPI, and that a
body it parses is refused as FastAPI refuses it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
from fastapi import Body, FastAPI
from fastapi.testclient import TestClient
from starlette.responses import Response
from starlette.routing import Match

from deployments.errors import BadRequest
from deployments.http.api import api
from deployments.http.hot import HotRoutes, parse_body
from deployments.http.recommend_routes import RecommendBody
from deployments.http.search_routes import SearchBody


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(f"app {scope['method']} {scope['path']}")


def _routes(recorder: _Recorder) -> HotRoutes:
    async def handler(host: Any, scope: Any, receive: Any, send: Any) -> None:
        recorder.calls.append(f"{host} {scope['path']}")

    return HotRoutes(recorder, {"/v1/embeddings": handler, "/v1/search": handler})


def _call(route: HotRoutes, method: str, path: str, root_path: str = "") -> None:
    scope = {"type": "http", "method": method, "path": path, "root_path": root_path}
    asyncio.run(route(scope, None, None))


def test_only_the_hot_routes_take_the_shortcut() -> None:
    recorder = _Recorder()
    route = _routes(recorder)
    route._ingress = "ingress"  # as inside a replica
    _call(route, "POST", "/v1/embeddings")
    _call(route, "POST", "/api/v1/embeddings", root_path="/api")  # under a route prefix
    _call(route, "GET", "/v1/embeddings")  # the route's one handler answers 405
    _call(route, "POST", "/v1/search")
    _call(route, "POST", "/v1/embeddings/x")
    _call(route, "POST", "/v2/models/minilm/infer")
    assert recorder.calls == [
        "ingress /v1/embeddings",
        "ingress /api/v1/embeddings",
        "ingress /v1/embeddings",
        "ingress /v1/search",
        "app POST /v1/embeddings/x",
        "app POST /v2/models/minilm/infer",
    ]


def test_outside_a_serve_replica_fastapi_answers() -> None:
    recorder = _Recorder()
    _call(_routes(recorder), "POST", "/v1/embeddings")
    assert recorder.calls == ["app POST /v1/embeddings"]


def _fastapi_message(model: type[Any], raw: bytes) -> str:
    """What the service's FastAPI app answers for `raw` sent to a route taking `model`."""
    app = FastAPI()
    app.exception_handlers.update(api.exception_handlers)

    async def route(body: Any) -> Response:
        return Response("ok")

    route.__annotations__.update(body=Annotated[model, Body()])  # the model under test
    app.post("/r")(route)
    got = TestClient(app).post("/r", content=raw, headers={"content-type": "application/json"})
    assert got.status_code == 400, got.text
    message: str = got.json()["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("model", "raw"),
    [
        (RecommendBody, b'{"k": 3}'),
        (RecommendBody, b'{"user": "u1", "k": 0}'),
        (RecommendBody, b'{"user": "u1", "kk": 1}'),
        (RecommendBody, b'{"user": "u1", "catalog": "bad name"}'),
        (RecommendBody, b'{"user": "u1", "context": {"item": 5}}'),
        (RecommendBody, b"[1, 2]"),
        (RecommendBody, b""),
        (SearchBody, b'{"catalog": "products"}'),
        (SearchBody, b'{"catalog": "products", "query": "shoe", "hybrid": "maybe"}'),
        (SearchBody, b'{"catalog": "products", "query": "shoe", "filters": 3}'),
    ],
)
def test_a_parsed_body_is_refused_as_fastapi_refuses_it(model: type[Any], raw: bytes) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_body(raw, model)
    assert refused.value.message == _fastapi_message(model, raw)


def test_a_body_that_is_not_json_is_named() -> None:
    with pytest.raises(BadRequest, match="body: not valid JSON"):
        parse_body(b'{"user": ', RecommendBody)


def test_the_hot_routes_come_first_for_serves_route_lookup() -> None:
    from ray.serve._private.thirdparty.get_asgi_route_name import get_asgi_route_name

    from deployments.ingress import api as ingress_api

    paths = ["/v1/embeddings", "/v1/search", "/v1/recommendations"]
    assert [getattr(r, "path", None) for r in ingress_api.routes[:3]] == paths
    for path in paths:  # the `route` label of Serve's metrics, found at the head
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}
        assert get_asgi_route_name(ingress_api, scope) == path
        # No route further down matches the path too, so moving them changed no dispatch.
        later = ingress_api.routes[len(paths) :]
        assert all(route.matches(scope)[0] == Match.NONE for route in later)
    # In the OpenAPI document as before: embeddings documented by hand, the others declared.
    documented = ingress_api.openapi()["paths"]
    assert all("post" in documented[path] for path in paths)


def test_putting_routes_first_leaves_dispatch_as_it_was() -> None:
    from deployments.http.hot import routes_first

    app = FastAPI()

    @app.get("/items/{name}")
    async def item(name: str) -> dict[str, str]:
        return {"got": name}

    @app.get("/hot")
    async def hot_get() -> dict[str, str]:
        return {"got": "get"}

    @app.post("/hot")
    async def hot_post() -> dict[str, str]:
        return {"got": "post"}

    before = app.openapi()
    app.openapi_schema = None
    routes_first(app.router, ["/bare", "/hot"])
    assert [getattr(r, "path", None) for r in app.routes[:3]] == ["/bare", "/hot", "/hot"]
    assert app.openapi() == before  # the bare route stays out of the document
    client = TestClient(app)
    assert client.get("/hot").json() == {"got": "get"}
    assert client.post("/hot").json() == {"got": "post"}
    assert client.delete("/hot").status_code == 405
    assert client.get("/items/hot").json() == {"got": "hot"}
    for method in ("get", "post"):  # no route of its own: the app's 404, as before
        r = getattr(client, method)("/bare")
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
