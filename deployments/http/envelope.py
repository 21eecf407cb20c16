"""The request envelope: request id, bounded body reading, the one place errors become
responses, and the access line and metrics of every request."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from logging import Logger
from typing import Any, Protocol

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.dataplane import CallRecord
from deployments.errors import InferenceFailed, PayloadTooLarge, ServekitError
from deployments.observability.logs import log_request
from deployments.observability.tracing import RequestTrace, Tracing
from deployments.observability.tracing import from_env as tracing_from_env
from deployments.tenancy.access import Access
from deployments.tenancy.principal import Principal

# Logged and counted for a request whose caller went away before the answer.
CLIENT_CLOSED = 499


class RequestMetrics(Protocol):
    """Where answered requests are recorded."""

    def observe(
        self, model: str, version: str, route: str, code: int, seconds: float, inputs: int
    ) -> None:
        """One answered request."""

    def observe_tenant(self, tenant: str, code: int) -> None:
        """One answered request of an authenticated tenant."""


# Every response says which version of servekit's API answered (`/v1` only grows: see
# the README's versioning policy and api/openapi.json).
API_VERSION_HEADER = "API-Version"
API_VERSION = "1"


def request_id(header: str | bytes | None) -> str:
    """The caller's request id, or a fresh one."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    return header[:128] if header else uuid.uuid4().hex


def error_response(
    error: ServekitError, rid: str, oip: bool, extra_headers: dict[str, str] | None = None
) -> Response:
    """The JSON body for an error: servekit's `/v1` shape, or the inference protocol's.
    A 5xx message says only what a caller can act on, plus the request id."""
    message = error.message
    if error.status >= 500:
        message = f"{message} (request id {rid})"
    body: dict[str, Any]
    if oip:
        body = {"error": message}
    else:
        body = {"error": {"code": error.code, "message": message, "request_id": rid}}
    return Response(
        orjson.dumps(body),
        status_code=error.status,
        media_type="application/json",
        headers={**error.headers, **(extra_headers or {}), API_VERSION_HEADER: API_VERSION},
    )


def too_large(limit: int) -> PayloadTooLarge:
    """The 413 of a body over `limits.max_body_bytes`."""
    return PayloadTooLarge(f"body: larger than the {limit}-byte limit")


async def read_body(declared: str, stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `limit` bytes:
    from `Content-Length` before reading, else while streaming."""
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class BodyLimit:
    """ASGI: a call's body bounded by `limits.max_body_bytes` as `read_body` bounds the
    hot routes' (which never reach this layer): refused (413) from `Content-Length`
    before a byte is read, else as soon as the chunks received pass the limit. The
    refusal is raised from `receive`, where the route reads its body, so that the route
    answers it in its own error shape: a body read by hand in its envelope, one FastAPI
    parses through the app's handler of FastAPI's errors (`api._http`)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit  # the replica's limit, known only once it serves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the call with `receive` bounded."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        over = declared.isdigit() and int(declared) > limit
        received, done = 0, False

        async def bounded() -> Message:
            nonlocal received, done
            if over:
                raise too_large(limit)
            message = await receive()
            if not done and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
                done = not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)


class Envelope:
    """Runs a request's work: maps its failure to the error shape, records metrics and
    the access line, also for requests whose caller went away."""

    def __init__(
        self,
        metrics: RequestMetrics,
        log: Logger,
        access: Access | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`tracing` None: as the process's environment configures it."""
        self.metrics = metrics
        self.log = log
        self.usage = access.usage if access is not None else None
        self.tracing = tracing if tracing is not None else tracing_from_env()

    async def run(
        self,
        rid: str,
        route: str,
        is_oip: bool,
        work: Callable[[CallRecord], Awaitable[Response]],
        principal: Principal | None = None,
        traceparent: str | bytes | None = None,
    ) -> Response:
        """Answer one request with `work`'s response or its error; count it against the
        caller's tenant; trace it as part of the caller's `traceparent` (or a trace of
        its own)."""
        started = time.perf_counter()
        call = CallRecord(principal=principal)
        trace = self.tracing.begin(route, traceparent)
        try:
            response = await work(call)
        except ServekitError as e:
            response = error_response(e, rid, is_oip)
        except asyncio.CancelledError:  # the caller went away (or the server stops)
            self._record(rid, route, call, CLIENT_CLOSED, started, trace)
            raise
        except Exception as e:  # an unmapped failure: log it, say nothing internal
            self.log.error("unhandled", exc_info=e, extra={"fields": {"request_id": rid}})
            response = error_response(InferenceFailed("internal error"), rid, is_oip)
        response.headers[API_VERSION_HEADER] = API_VERSION
        if call.version != "-":
            response.headers["X-Model-Version"] = call.version
        if call.headers:
            response.headers.update(call.headers)
        self._record(rid, route, call, response.status_code, started, trace)
        return response

    def refused(self, rid: str, path: str, status: int, tenant: str, started: float) -> None:
        """Record a call the auth gate refused (401/403) as the answered ones are: in
        the requests series (model, version and route `-`: the path is the caller's and
        unbounded), the tenant's when its key was known, and the access log. Not in
        the tenant's usage: nothing was served."""
        seconds = time.perf_counter() - started
        self.metrics.observe("-", "-", "-", status, seconds, 0)
        if tenant != "-":
            self.metrics.observe_tenant(tenant, status)
        log_request(self.log, rid, path[:64], "-", "-", status, started, 0, tenant)

    def _record(
        self,
        rid: str,
        route: str,
        call: CallRecord,
        status: int,
        started: float,
        trace: RequestTrace,
    ) -> None:
        seconds = time.perf_counter() - started
        self.metrics.observe(call.model, call.version, route, status, seconds, call.inputs)
        tenant = "-"
        if call.principal is not None:
            tenant = call.principal.tenant_id
            # The operator is no tenant: its calls (the dashboard's polling, the CLI)
            # would read as a tenant's in the pooled series `other`.
            if not call.principal.operator:
                self.metrics.observe_tenant(tenant, status)
                if self.usage is not None:
                    self.usage.add(tenant, call.model, call.inputs, status >= 400)
        log_request(
            self.log,
            rid,
            route,
            call.model,
            call.version,
            status,
            started,
            call.inputs,
            tenant,
            trace.trace_id,
        )
        if trace.sampled:
            trace.end(
                status,
                {
                    "http.route": route,
                    "servekit.request_id": rid,
                    "servekit.model": call.model,
                    "servekit.version": call.version,
                    "servekit.inputs": call.inputs,
                    "servekit.tenant": tenant,
                },
            )
