"""Function routes (admin, catalogs, search) run in the replica's Ingress: its envelope
maps their errors, records their metrics and usage, as for the class's own routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from deployments.dataplane import CallRecord
from deployments.http.auth import principal_of
from deployments.http.envelope import request_id


def replica_host() -> Any:
    """The Ingress object of this replica."""
    return serve.get_replica_context().servable_object


async def run_route(
    request: Request, route: str, work: Callable[[CallRecord], Awaitable[Response]]
) -> Response:
    """Answer one call with `work` inside the replica's envelope, as the caller the auth
    gate resolved."""
    host = replica_host()
    rid = request_id(request.headers.get("x-request-id"))
    response: Response = await host.envelope.run(
        rid, route, False, work, principal_of(request.scope), request.headers.get("traceparent")
    )
    return response


async def admit_admin_call(host: Any, call: CallRecord) -> None:
    """Admit an admin call (one request, no texts) as `Principal.as_admin_call` limits
    it, its rate limit headers onto `call`; with auth off (no caller) as any call."""
    if call.principal is None:
        await host.plane.admit(call, 0)
        return
    admitted = CallRecord(principal=call.principal.as_admin_call())
    await host.plane.admit(admitted, 0)
    call.headers.update(admitted.headers)
