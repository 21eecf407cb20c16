"""The ASGI shortcut for `POST /v1/embeddings`: which calls it takes, which it leaves."""

from __future__ import annotations

import asyncio
from typing import Any

from deployments.http.embeddings import EmbeddingsRoute


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(f"app {scope['method']} {scope['path']}")

    async def embeddings_asgi(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(f"ingress {scope['path']}")


def _call(route: EmbeddingsRoute, method: str, path: str, root_path: str = "") -> None:
    scope = {"type": "http", "method": method, "path": path, "root_path": root_path}
    asyncio.run(route(scope, None, None))


def test_only_the_embeddings_route_takes_the_shortcut() -> None:
    recorder = _Recorder()
    route = EmbeddingsRoute(recorder)
    route._ingress = recorder  # type: ignore[assignment]  # as inside a replica
    _call(route, "POST", "/v1/embeddings")
    _call(route, "POST", "/api/v1/embeddings", root_path="/api")  # under a route prefix
    _call(route, "GET", "/v1/embeddings")  # the route's one handler answers 405
    _call(route, "POST", "/v1/embeddings/x")
    _call(route, "POST", "/v2/models/minilm/infer")
    assert recorder.calls == [
        "ingress /v1/embeddings",
        "ingress /api/v1/embeddings",
        "ingress /v1/embeddings",
        "app POST /v1/embeddings/x",
        "app POST /v2/models/minilm/infer",
    ]


def test_outside_a_serve_replica_fastapi_answers() -> None:
    recorder = _Recorder()
    _call(EmbeddingsRoute(recorder), "POST", "/v1/embeddings")
    assert recorder.calls == ["app POST /v1/embeddings"]
