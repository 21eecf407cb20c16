"""The hot routes, served straight from ASGI: `POST /v1/embeddings`, `/v1/search` and
`/v1/recommendations`.

`HotRoutes` (ASGI middleware) hands every call to these paths to their handler inside
the replica, past FastAPI's routing, parameter solving and exception layers (about 70 us
of CPU a request on a 2-core machine; for a recommendation, about 8 % of the replica's
event loop under load). Each route has one implementation, which its FastAPI
declaration (OpenAPI, the documentation) also calls; `serve_json` parses a JSON body into
the same model and answers the same errors as FastAPI does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.dataplane import CallRecord
from deployments.errors import BadRequest, MethodNotAllowed, request_invalid
from deployments.http.auth import principal_of
from deployments.http.envelope import read_body, request_id
from deployments.replicas.traffic import REPLICA_TRAFFIC, Traffic

# A hot route's handler: the replica's Ingress and the ASGI call.
Handler = Callable[[Any, Scope, Receive, Send], Awaitable[None]]
Body = TypeVar("Body", bound=BaseModel)
# What a JSON route does with its parsed body, as the caller `call`.
Work = Callable[[Any, CallRecord, Body, Headers], Awaitable[Response]]


class HotRoutes:
    """ASGI middleware: calls to a hot route's path go to its handler with the replica's
    Ingress; everything else, and every route outside a Serve replica, goes on to
    FastAPI."""

    def __init__(
        self, app: ASGIApp, routes: Mapping[str, Handler], traffic: Traffic = REPLICA_TRAFFIC
    ) -> None:
        self.app = app
        self.routes = routes
        self.traffic = traffic  # every HTTP call is counted in flight
        self._ingress: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.traffic.enter(scope.get("client"))
        try:
            handler = self.routes.get(scope["path"][len(scope.get("root_path", "")) :])
            ingress = None if handler is None else self._ingress or self._find_ingress()
            if handler is not None and ingress is not None:
                await handler(ingress, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            self.traffic.leave()

    def _find_ingress(self) -> Any:
        try:
            self._ingress = serve.get_replica_context().servable_object
        except RayServeException:  # not inside a Serve replica
            return None
        return self._ingress


def routes_first(router: Router, paths: Iterable[str]) -> None:
    """Put the routes of `paths` at the head of `router`'s list. Serve finds each HTTP
    request's route (its metrics' `route` label) by walking the app's routes in order,
    and for a path no route declares walks them twice (the trailing-slash retry): on the
    replica's event loop, 107 us a `/v1/embeddings` request and about 50 us a search or
    recommendation with the routes in declaration order, against one match at the head.
    A path with no route of its own (`/v1/embeddings`, documented by hand) gets one here,
    out of the OpenAPI document, answering 404 as before should a call reach it outside a
    replica (in one, `HotRoutes` serves the path first). Dispatch stays the same as long
    as no route of another path matches these paths too (a unit test holds the app's
    routes to it); each path's own routes keep their order."""
    wanted = list(paths)
    declared: dict[str, list[BaseRoute]] = {p: [] for p in wanted}
    rest: list[BaseRoute] = []
    for route in router.routes:
        path: str = getattr(route, "path", "")
        declared.get(path, rest).append(route)
    head: list[BaseRoute] = []
    for path in wanted:
        head += declared[path] or [Route(path, _NoRoute(), include_in_schema=False)]
    router.routes[:] = head + rest


class _NoRoute:
    """ASGI: the 404 the app answers for a path it has no route for."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPException(status_code=404)


def body_stream(receive: Receive) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive."""

    async def stream() -> AsyncIterator[bytes]:
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise BadRequest("body: the client went away")
            more = message.get("more_body", False)
            yield message.get("body", b"")

    return stream()


async def answer(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    """Send `response`; a 405 names the one method the route takes."""
    if response.status_code == 405:
        response.headers["Allow"] = "POST"
    await response(scope, receive, send)


async def serve_json(
    host: Any,
    scope: Scope,
    receive: Receive,
    send: Send,
    route: str,
    model: type[Body],
    work: Work[Body],
) -> None:
    """One call to a JSON route: the body (bounded by `limits.max_body_bytes`) parsed
    into `model`, then `work` in the replica's envelope, as the caller the auth gate
    resolved."""
    headers = Headers(scope=scope)

    async def parsed(call: CallRecord) -> Response:
        if scope["method"] != "POST":
            raise MethodNotAllowed("method not allowed on this route")
        limit = host.args.limits.max_body_bytes
        raw = await read_body(headers.get("content-length", ""), body_stream(receive), limit)
        return await work(host, call, parse_body(raw, model), headers)

    rid = request_id(headers.get("x-request-id"))
    response = await host.envelope.run(
        rid, route, False, parsed, principal_of(scope), headers.get("traceparent")
    )
    await answer(scope, receive, send, response)


def parse_body(raw: bytes, model: type[Body]) -> Body:
    """A JSON object validated into `model`: a 400 naming the field, as FastAPI's
    validation of the same model answers."""
    if not raw.strip():
        raise request_invalid([{"loc": ("body",), "type": "missing", "msg": "Field required"}])
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest("body: not valid JSON") from e
    try:
        return model.model_validate(doc, from_attributes=True)  # as FastAPI validates
    except ValidationError as e:
        errors = e.errors(include_input=False, include_url=False)
        raise request_invalid([{**err, "loc": ("body", *err["loc"])} for err in errors]) from e
