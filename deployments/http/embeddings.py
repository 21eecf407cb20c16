"""`/v1/embeddings`, the hot route, served straight from ASGI.

`EmbeddingsRoute` (ASGI middleware) hands every call to this path to the replica's
`Ingress.embeddings_asgi`, past FastAPI's routing, parameter solving and exception
layers (about 70 us of CPU a request on a 2-core machine). This is the route's one
implementation; its OpenAPI entry is written in `deployments/http/api.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from configs.schema import Limits
from deployments.dataplane import CallRecord, DataPlane
from deployments.errors import BadRequest, MethodNotAllowed
from deployments.http.auth import principal_of
from deployments.http.envelope import Envelope, read_body, request_id
from deployments.http.openai import encode_response, parse_request

ROUTE = "/v1/embeddings"
ROUTING_KEY_MAX_CHARS = 256  # X-Routing-Key: longer is a 400 (OpenAI routes), cut (OIP)


class EmbeddingsHost(Protocol):
    """What serves the route inside a replica (the Ingress)."""

    async def embeddings_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one call to the route."""


class EmbeddingsRoute:
    """ASGI middleware: every call to `/v1/embeddings` goes to the replica's ingress;
    everything else, and this route outside a Serve replica, goes on to FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._ingress: EmbeddingsHost | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI call."""
        if scope["type"] == "http" and scope["path"][len(scope.get("root_path", "")) :] == ROUTE:
            ingress = self._ingress or self._find_ingress()
            if ingress is not None:
                await ingress.embeddings_asgi(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _find_ingress(self) -> EmbeddingsHost | None:
        try:
            servable = serve.get_replica_context().servable_object
        except RayServeException:  # not inside a Serve replica
            return None
        self._ingress = servable if hasattr(servable, "embeddings_asgi") else None
        return self._ingress


async def serve_embeddings(
    scope: Scope, receive: Receive, send: Send, plane: DataPlane, envelope: Envelope, limits: Limits
) -> None:
    """Parse, embed through the data plane, encode: one call to the route."""
    headers: dict[bytes, bytes] = dict(scope["headers"])
    rid = request_id(headers.get(b"x-request-id"))

    async def stream() -> AsyncIterator[bytes]:
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise BadRequest("body: the client went away")
            more = message.get("more_body", False)
            yield message.get("body", b"")

    async def work(call: CallRecord) -> Response:
        if scope["method"] != "POST":
            raise MethodNotAllowed("method not allowed on this route")
        pinned, key = _header(headers, b"x-model-version"), _header(headers, b"x-routing-key")
        if key is not None and len(key) > ROUTING_KEY_MAX_CHARS:
            raise BadRequest(
                "header.x-routing-key: String should have at most "
                f"{ROUTING_KEY_MAX_CHARS} characters"
            )
        declared = headers.get(b"content-length", b"").decode("latin-1")
        body = parse_request(
            await read_body(declared, stream(), limits.max_body_bytes),
            limits.max_inputs_per_request,
        )
        out = await plane.embed(
            call,
            body.model,
            body.texts(),
            pinned,
            "X-Model-Version",
            key or body.user,
            "input",
            body.dimensions,
        )
        content = encode_response(body.model, out.vectors, out.tokens, body.encoding_format)
        return Response(content, media_type="application/json")

    response = await envelope.run(rid, ROUTE, False, work, principal_of(scope))
    if response.status_code == 405:
        response.headers["Allow"] = "POST"
    await response(scope, receive, send)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None
