"""`/v1/embeddings`, the hot route, served straight from ASGI (`deployments/http/hot.py`).
This is the route's one implementation; its OpenAPI entry is written in
`deployments/http/api.py`.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from deployments.dataplane import CallRecord
from deployments.errors import BadRequest, MethodNotAllowed
from deployments.http.auth import principal_of
from deployments.http.envelope import read_body, request_id
from deployments.http.hot import answer, body_stream
from deployments.http.openai import encode_response, parse_request

ROUTE = "/v1/embeddings"
ROUTING_KEY_MAX_CHARS = 256  # X-Routing-Key: longer is a 400 (OpenAI routes), cut (OIP)


async def serve_embeddings(host: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Parse, embed through the data plane, encode: one call to the route, in the
    replica's Ingress `host`."""
    headers: dict[bytes, bytes] = dict(scope["headers"])
    rid = request_id(headers.get(b"x-request-id"))
    plane, limits = host.plane, host.args.limits

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
            await read_body(declared, body_stream(receive), limits.max_body_bytes),
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

    response = await host.envelope.run(
        rid, ROUTE, False, work, principal_of(scope), headers.get(b"traceparent")
    )
    await answer(scope, receive, send, response)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None
