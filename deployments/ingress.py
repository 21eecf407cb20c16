"""The HTTP front door's routes: each parses and encodes through `deployments/http/` and
works through the one data plane; `deployments/app.py` makes `Ingress` a deployment."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Header, Request
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.responses import Response

from configs.schema import AppArgs, IngressLiveConfig
from configs.settings import tune_interpreter
from deployments.canary_sync import CanarySync, replica_identity
from deployments.dataplane import CallRecord, DataPlane
from deployments.http import admin, dashboard, embeddings, events_routes, inference, oip
from deployments.http import recommend_routes as recommend
from deployments.http import search_routes as search
from deployments.http.api import V2_ERRORS, VERSION, OipError, api, body_doc
from deployments.http.auth import AuthGate, principal_of
from deployments.http.envelope import Envelope, request_id
from deployments.http.hot import HotRoutes, routes_first
from deployments.observability.logs import get_logger
from deployments.observability.metrics import IngressMetrics, RouterMetrics
from deployments.pipelines import wiring
from deployments.pipelines.features_wiring import open_features
from deployments.pipelines.recommend_wiring import open_recommend
from deployments.pipelines.wiring import item_embedder, open_cache, open_search, search_spaces
from deployments.replicas.inline_backend import InlineBackend, configure_inline, load_inline
from deployments.replicas.remote import closeable, version_backends
from deployments.routing.router import VersionRouter
from deployments.tenancy.access import Access

Handles = dict[str, DeploymentHandle[Any]]
Shards = list[DeploymentHandle[Any]] | None


class Ingress:
    """Routes requests to model versions; runs the inline ones in-process."""

    def __init__(self, args: dict[str, Any], servers: Handles, shards: Shards = None) -> None:
        """`servers`: dedicated versions' deployments by name; `shards`: catalog shards'."""
        tune_interpreter()
        self.args = AppArgs.model_validate(args)
        self.inline: dict[tuple[str, str], InlineBackend] = load_inline(self.args)
        backends = version_backends(self.args, servers, self.inline)
        self.router = VersionRouter(self.args, backends, RouterMetrics())
        auth = self.args.auth
        self.access = Access.open(auth, get_logger("auth")) if auth.enabled else None
        self.plane = DataPlane(self.args, self.router, self.access, open_cache(get_logger("cache")))
        self.log = get_logger("access")
        metrics = IngressMetrics(frozenset(auth.metrics_tenants))
        self.envelope = Envelope(metrics, self.log, self.access)
        self.search = open_search(self.args, self.plane, get_logger("search"), shards)
        self.features = open_features(self.args, self.search, get_logger("features"))
        self.recommend = open_recommend(self.args, backends, self.search, self.features)
        self.created = int(time.time())
        self.canary = CanarySync(self.router, *replica_identity())

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply traffic, shadow, rollout, batching and the embedding cache in place;
        in-flight requests keep their version. With a rollout policy, the verdicts already
        decided under this config (by any replica) apply before this replica serves."""
        live = IngressLiveConfig.model_validate(user_config)
        if self.access is not None:
            self.access.start()
        await self.plane.configure(live)
        configure_inline(self.inline, live.batching)
        if self.search is not None:
            await self.search.start(search_spaces(self.args, live))
        if live.rollout:
            await self.canary.sync_once()
            self.canary.start()
        fields = {"traffic": live.traffic, "rollout": list(live.rollout)}
        self.log.info("live config applied", extra={"fields": fields})

    async def embed_for_index(self, tenant: str, space: str, texts: list[str]) -> Any:
        """Item vectors for a catalog shard's backfill (the shards hold no model)."""
        return await item_embedder(self.args, self.plane)(tenant, space, texts)

    async def __del__(self) -> None:
        """Serve's replica shutdown: the worker first, then each part whatever the others do."""
        worker = self.recommend.worker if self.recommend is not None else None
        parts = [worker, self.access, self.search, self.plane.cache, self.features]
        await wiring.close_parts([*parts, *closeable(self.router.backends)], self.log)

    async def check_health(self) -> None:
        """Serve's health check: raises while an inline version's runtime is wedged."""
        await asyncio.gather(*(backend.health.check() for backend in self.inline.values()))

    def wedge(self, model: str, version: str) -> str:
        """Test-only: make an inline version's runtime hang (needs fault_injection)."""
        backend = self.inline[(model, version)]
        if self.args.models[model].versions[version].fault_injection is None:
            raise PermissionError("wedge needs fault_injection on this version")
        backend.batcher.wedge.engage()
        return str(serve.get_replica_context().replica_id.unique_id)

    async def _run(
        self, request: Request, route: str, oip_route: bool, work: Any, texts: bool = False
    ) -> Response:
        """Run a route's work in the envelope; routes without texts take one request
        from the caller's limits here (`texts` routes, in the data plane)."""
        rid = request_id(request.headers.get("x-request-id"))

        async def admitted(call: CallRecord) -> Response:
            if not texts:
                await self.plane.admit(call, 0)
            response: Response = await work(call)
            return response

        principal, parent = principal_of(request.scope), request.headers.get("traceparent")
        return await self.envelope.run(rid, route, oip_route, admitted, principal, parent)

    async def _v2(
        self, request: Request, route: str, work: Any, name: str, version: str | None
    ) -> Response:
        """An inference protocol route about one model (or version): `work(plane, call,
        name, version)` in the envelope."""
        return await self._run(request, route, True, lambda c: work(self.plane, c, name, version))

    # ---- servekit's own /v1 routes ------------------------------------------------

    @api.get("/v1/models", **inference.LIST_DOC)
    async def list_models(self, request: Request) -> Response:
        """Every served model with its versions and their current traffic weights."""
        return await self._run(
            request,
            "/v1/models",
            False,
            lambda call: inference.model_list(self.router, self.args, call, self.created),
        )

    @api.get("/v1/models/{name}", **inference.CARD_DOC)
    async def model_detail(self, request: Request, name: str) -> Response:
        """Versions, configured and effective weights, canary and shadow state (the
        canary window and verdict are shared by every ingress replica), and the last
        minute's request rate, error rate and p95 per version, as seen by the ingress
        replica that answers."""
        return await self._run(
            request,
            "/v1/models/detail",
            False,
            lambda call: inference.model_card(self.router, self.args, call, self.created, name),
        )

    # ---- Open Inference Protocol --------------------------------------------------

    @api.get("/v2", summary="Server metadata", response_model=oip.ServerMetadata)
    async def server_metadata(self) -> dict[str, Any]:
        """Name, version and protocol extensions of this server."""
        return {"name": "servekit", "version": VERSION, "extensions": ["binary_tensor_data"]}

    @api.get("/v2/health/live", summary="Liveness")
    async def live(self) -> dict[str, bool]:
        """200 while the ingress answers."""
        return {"live": True}

    @api.get("/v2/health/ready", summary="Readiness", responses={503: {"model": OipError}})
    async def ready(self) -> Response:
        """200 when every version with traffic has a ready, unwedged replica, else 503."""
        ok = await self.plane.ready(list(self.args.models))
        return inference.json_response({"ready": ok}, 200 if ok else 503)

    @api.get(
        "/v2/models/{name}",
        summary="Model metadata",
        response_model=oip.ModelMetadata,
        responses=V2_ERRORS,
    )
    async def model_metadata(self, request: Request, name: str) -> Response:
        """Versions, platform and tensor signature of a model."""
        return await self._v2(request, "/v2/models/metadata", inference.metadata, name, None)

    @api.get(
        "/v2/models/{name}/versions/{version}",
        summary="Model version metadata",
        response_model=oip.ModelMetadata,
        responses=V2_ERRORS,
    )
    async def version_metadata(self, request: Request, name: str, version: str) -> Response:
        """Platform and tensor signature of one version."""
        return await self._v2(request, "/v2/models/metadata", inference.metadata, name, version)

    @api.get("/v2/models/{name}/ready", summary="Model readiness", responses=V2_ERRORS)
    async def model_ready(self, request: Request, name: str) -> Response:
        """200 when every version of the model with traffic has a ready replica."""
        return await self._v2(request, "/v2/models/ready", inference.ready, name, None)

    @api.get(
        "/v2/models/{name}/versions/{version}/ready",
        summary="Model version readiness",
        responses=V2_ERRORS,
    )
    async def version_ready(self, request: Request, name: str, version: str) -> Response:
        """200 when the version has a ready replica, whatever its traffic."""
        return await self._v2(request, "/v2/models/ready", inference.ready, name, version)

    @api.post(
        "/v2/models/{name}/infer",
        summary="Inference (traffic-split)",
        response_model=oip.InferenceResponse,
        responses=V2_ERRORS,
        openapi_extra=body_doc(oip.InferenceRequest, binary=True),
    )
    async def infer(
        self,
        request: Request,
        name: str,
        x_model_version: str | None = Header(None, description="Pin a version."),
    ) -> Response:
        """Embed a BYTES tensor of texts; JSON or binary tensor data both ways."""
        return await self._infer(request, name, x_model_version, "X-Model-Version")

    @api.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="Inference on a pinned version",
        response_model=oip.InferenceResponse,
        responses=V2_ERRORS,
        openapi_extra=body_doc(oip.InferenceRequest, binary=True),
    )
    async def infer_version(self, request: Request, name: str, version: str) -> Response:
        """Like `/infer`, on the version named in the path."""
        return await self._infer(request, name, version, "version")

    async def _infer(
        self, request: Request, name: str, pinned: str | None, source: str
    ) -> Response:
        limits = self.args.limits
        return await self._run(
            request,
            "/v2/models/infer",
            True,
            lambda call: inference.infer(self.plane, limits, call, request, name, pinned, source),
            texts=True,
        )


for _routes in (admin.router, dashboard.router, search.router, events_routes.router):
    api.include_router(_routes)
api.include_router(recommend.router)
hot = {embeddings.ROUTE: embeddings.serve_embeddings, search.SEARCH_ROUTE: search.serve_search,
       recommend.ROUTE: recommend.serve_recommend}  # fmt: skip
api.add_middleware(HotRoutes, routes=hot)
routes_first(api.router, hot)
api.add_middleware(AuthGate)  # added last: runs first, ahead of every route
