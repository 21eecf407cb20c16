"""API keys ahead of every route: ASGI middleware, outermost, so the embeddings fast
path is covered too. It resolves `Authorization: Bearer <key>` through the replica's key
cache (no database on the request path), checks the route's scope, and hands the caller
to the routes in the ASGI scope. 401 without or with an unusable key (never saying
why); 403 outside the key's rights, naming the scope the route needs."""

from __future__ import annotations

import time
from typing import Protocol, cast

from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.errors import ServekitError, Unauthorized
from deployments.http.envelope import Envelope, error_response, request_id
from deployments.tenancy.access import Access
from deployments.tenancy.principal import Principal

PRINCIPAL = "servekit.principal"  # ASGI scope key of the resolved caller

# Path prefix -> the scope a key needs (the first match wins); other routes need a
# valid key of the tenant and nothing more. Catalog writes (any method but GET and HEAD
# under CATALOGS) need `catalog` instead: a search key (one a browser may hold) reads
# items but neither changes nor deletes them.
CATALOGS = "/v1/catalogs"
READS = frozenset({"GET", "HEAD"})
ROUTE_SCOPES: tuple[tuple[str, str], ...] = (
    ("/v1/embeddings", "embed"),
    ("/v1/search", "search"),
    (CATALOGS, "search"),
    ("/v1/recommendations", "recommend"),
    ("/v1/events", "events"),
    ("/v1/features", "recommend"),
    ("/v1/usage", "usage"),
    ("/admin/", "admin"),
)
# The dashboard's page and scripts: static files holding no data, answered without a key
# (a browser opening a page cannot send one); its data comes from /admin/v1/dashboard/...
PAGE_PREFIX = "/dashboard"


def is_page(path: str) -> bool:
    """Whether `path` is the dashboard's page or one of its files."""
    return path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + "/")


def required_scope(path: str, method: str = "GET") -> str | None:
    """The scope a call of `method` on a route needs, if any; OIP inference needs
    `embed`, a catalog write `catalog`."""
    for prefix, scope in ROUTE_SCOPES:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            if prefix == CATALOGS and method not in READS:
                return "catalog"
            return scope
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "embed"
    return None


def model_in_path(path: str) -> str | None:
    """The model a `/v1/models/{m}` or `/v2/models/{m}/...` route is about."""
    for prefix in ("/v1/models/", "/v2/models/"):
        if path.startswith(prefix):
            name = path[len(prefix) :].split("/", 1)[0]
            return name or None
    return None


def principal_of(scope: Scope) -> Principal | None:
    """The caller the middleware resolved (None with auth off or on an exempt path)."""
    principal: Principal | None = scope.get(PRINCIPAL)
    return principal


def bearer(scope: Scope) -> str | None:
    """The token of `Authorization: Bearer <token>`, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


class AccessHost(Protocol):
    """What holds a replica's `Access` (the Ingress); None when auth is off. Its
    envelope records the calls the gate refuses."""

    access: Access | None
    envelope: Envelope


def check_rights(principal: Principal, path: str, method: str = "GET") -> None:
    """403 unless the caller's key covers the scope of a call of `method` on the route
    and the model it names."""
    needed = required_scope(path, method)
    if needed is not None:
        principal.require(needed)
    model = model_in_path(path)
    if model is not None:
        principal.check_model(model)


class AuthGate:
    """ASGI middleware: the caller of every non-exempt request, or 401/403."""

    def __init__(self, app: ASGIApp, host: AccessHost | None = None) -> None:
        self.app = app
        self._host = host  # found in the replica on first use unless given
        self._searched = host is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate one HTTP call, then pass it on."""
        if scope["type"] != "http":  # lifespan events run before the replica is built
            await self.app(scope, receive, send)
            return
        host = self._host if self._searched else self._find_host()
        if host is None or host.access is None:
            await self.app(scope, receive, send)
            return
        path = scope["path"][len(scope.get("root_path", "")) :]
        if path in host.access.exempt_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        token = bearer(scope)
        principal = host.access.keys.lookup(token) if token else None
        if principal is None:
            if is_page(path):  # checked only here: nothing added to a keyed request
                await self.app(scope, receive, send)
                return
            await self._refuse(Unauthorized(), "-", scope, receive, send, path, started)
            return
        try:
            check_rights(principal, path, scope.get("method", "GET"))
        except ServekitError as e:
            await self._refuse(e, principal.tenant_id, scope, receive, send, path, started)
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)

    async def _refuse(
        self,
        error: ServekitError,
        tenant: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        started: float,
    ) -> None:
        rid = request_id(dict(scope["headers"]).get(b"x-request-id"))
        response = error_response(error, rid, path.startswith("/v2"))
        assert self._host is not None  # a refusal needs the host's access
        self._host.envelope.refused(rid, path, error.status, tenant, started)
        await response(scope, receive, send)

    def _find_host(self) -> AccessHost | None:
        try:
            servable = serve.get_replica_context().servable_object
        except RayServeException:  # not inside a Serve replica: no auth to apply
            return None
        if not hasattr(servable, "access"):
            return None  # not built yet: look again on the next call
        self._searched = True
        self._host = cast(AccessHost, servable)
        return self._host
