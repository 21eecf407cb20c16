"""The HTTP front door: OpenAI-shaped embeddings, the Open Inference Protocol, health.

It validates and bounds every request, picks the version (traffic split in process,
or the version the caller pinned), calls that version's deployment, maps every
failure to one error shape, and records metrics and one JSON log line per request.
A plain class plus a FastAPI app; `deployments/app.py` makes it a Serve deployment.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from configs.schema import AppArgs, IngressLiveConfig
from deployments import oip
from deployments.calls import call_version
from deployments.errors import (
    BadRequest,
    InferenceFailed,
    InputTooLong,
    NotFound,
    PayloadTooLarge,
    ServekitError,
    TooManyInputs,
    error_response,
)
from deployments.inline import load_inline
from deployments.logs import get_logger, log_request
from deployments.metrics import IngressMetrics
from deployments.model_server import runtime_metadata
from deployments.openai_api import (
    EmbeddingRequest,
    EmbeddingResponse,
    ModelList,
    encode_response,
    parse_request,
)
from deployments.router import VersionRouter

VERSION = "0.1.0"
READY_TTL_S = 5.0
NOT_READY_TTL_S = 1.0
READY_PROBE_TIMEOUT_S = 2.0
ROUTING_KEY_MAX_CHARS = 256  # X-Routing-Key: longer is a 400 (OpenAI routes), cut (OIP)


class ErrorDetail(BaseModel):
    """Body of every error on `/v1` routes."""

    code: str
    message: str
    request_id: str


class ErrorBody(BaseModel):
    """`{"error": {...}}`."""

    error: ErrorDetail


class OipError(BaseModel):
    """Error body on `/v2` routes, as the inference protocol defines it."""

    error: str


_V1_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 500, 503, 504)
}
_V2_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OipError} for code in (400, 404, 413, 500, 503, 504)
}


class ServekitAPI(FastAPI):
    """FastAPI whose OpenAPI document also describes the hand-read request bodies."""

    def openapi(self) -> dict[str, Any]:
        """Bodies are read and bounded by hand (size limit first, then orjson), so their
        schemas are added here. Not cached: Serve rewrites the routes (the `self`
        parameter) after import, and the document must show the result."""
        schema = get_openapi(
            title=self.title, version=self.version, description=self.description, routes=self.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (EmbeddingRequest, oip.InferenceRequest):
            doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in doc.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = doc
        return schema


api = ServekitAPI(
    title="servekit",
    version=VERSION,
    description=(
        "Model serving: OpenAI-compatible embeddings under /v1 and the Open Inference "
        "Protocol (KServe v2, with the binary tensor extension) under /v2. Every "
        "response carries X-Request-ID and, when a model ran, X-Model-Version."
    ),
)


class EmbeddingsRoute:
    """ASGI middleware: `POST /v1/embeddings`, the hot route, goes straight to the
    replica's `Ingress.embeddings_asgi`, past FastAPI's routing, parameter solving and
    exception layers (about 70 us of CPU a request on the 2-core bench machine).
    Everything else, and this route outside a Serve replica, goes through FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._ingress: Ingress | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI call."""
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"][len(scope.get("root_path", "")) :] == "/v1/embeddings"
        ):
            ingress = self._ingress or self._find_ingress()
            if ingress is not None:
                await ingress.embeddings_asgi(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _find_ingress(self) -> Ingress | None:
        try:
            servable = serve.get_replica_context().servable_object
        except RayServeException:  # not inside a Serve replica
            return None
        self._ingress = servable if isinstance(servable, Ingress) else None
        return self._ingress


def _body_doc(model: type[BaseModel], binary: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    }
    if binary:
        content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "JSON header of Inference-Header-Content-Length bytes, then tensors.",
        }
    return {"requestBody": {"required": True, "content": content}}


def _request_id(request: Request) -> str:
    return _id_or_fresh(request.headers.get("x-request-id"))


def _id_or_fresh(header: str | None) -> str:
    # Serve's proxy sets x-request-id (the caller's, or a fresh one) and echoes it.
    return header or uuid.uuid4().hex


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    error = BadRequest(f"{where}: {first.get('msg', 'invalid')}")
    return error_response(error, _request_id(request), request.url.path.startswith("/v2"), {})


@api.exception_handler(HTTPException)
async def _http(request: Request, exc: HTTPException) -> Response:
    error = NotFound("no such route") if exc.status_code == 404 else BadRequest(str(exc.detail))
    if exc.status_code == 405:
        error = BadRequest("method not allowed on this route")
    return error_response(error, _request_id(request), request.url.path.startswith("/v2"), {})


@dataclass
class _Call:
    """What one request resolved to, for its log line and metrics."""

    model: str = "-"
    version: str = "-"
    inputs: int = 0


class Ingress:
    """Routes requests to model versions; holds no model itself."""

    def __init__(self, args: dict[str, Any], servers: dict[str, DeploymentHandle[Any]]) -> None:
        self.args = AppArgs.model_validate(args)
        self.handles: dict[tuple[str, str], DeploymentHandle[Any]] = {
            key: servers[name] for name, key in self.args.deployment_names().items()
        }
        self.router = VersionRouter(self.args, self.handles, load_inline(self.args))
        self.metrics = IngressMetrics()
        self.log = get_logger("access")
        self.created = int(time.time())
        self._ready_cache: dict[tuple[str, str], tuple[bool, float]] = {}
        self._meta_cache: dict[tuple[str, str], dict[str, Any]] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new traffic weights in place; in-flight requests keep their version."""
        live = IngressLiveConfig.model_validate(user_config)
        self.router.configure(live)
        self.log.info(
            "live config applied",
            extra={"fields": {"traffic": live.traffic, "rollout": list(live.rollout)}},
        )

    # ---- request plumbing -------------------------------------------------------

    async def _serve(
        self,
        request: Request | str,
        route: str,
        is_oip: bool,
        work: Callable[[_Call], Awaitable[Response]],
    ) -> Response:
        """Run `work`, map its failure to the error shape, record metrics and the log
        line. `request`: the request, or its id when the caller read it already."""
        started = time.perf_counter()
        request_id = request if isinstance(request, str) else _request_id(request)
        call = _Call()
        try:
            response = await work(call)
        except ServekitError as e:
            response = error_response(e, request_id, is_oip, {})
        except Exception as e:  # an unmapped failure: log it, say nothing internal
            self.log.error("unhandled", exc_info=e, extra={"fields": {"request_id": request_id}})
            response = error_response(InferenceFailed("internal error"), request_id, is_oip, {})
        if call.version != "-":
            response.headers["X-Model-Version"] = call.version
        status = response.status_code
        self.metrics.observe(
            call.model, call.version, route, status, time.perf_counter() - started, call.inputs
        )
        log_request(
            self.log, request_id, route, call.model, call.version, status, started, call.inputs
        )
        return response

    async def _read_body(self, request: Request) -> bytes:
        return await self._read_chunks(request.headers.get("content-length", ""), request.stream())

    async def _read_chunks(self, declared: str, stream: AsyncIterator[bytes]) -> bytes:
        limit = self.args.limits.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"body: larger than the {limit}-byte limit")
        chunks, size = [], 0
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body: larger than the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_limits(self, texts: list[str], field: str) -> None:
        limits = self.args.limits
        if len(texts) > limits.max_inputs_per_request:
            raise TooManyInputs(
                f"{field}: {len(texts)} inputs, at most {limits.max_inputs_per_request} allowed"
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_input_chars:
                raise InputTooLong(f"{field}.{i}: longer than {limits.max_input_chars} characters")

    # ---- OpenAI-shaped routes ---------------------------------------------------

    @api.post(
        "/v1/embeddings",
        summary="Create embeddings (OpenAI-compatible)",
        responses={200: {"model": EmbeddingResponse}, **_V1_ERRORS},
        openapi_extra=_body_doc(EmbeddingRequest),
    )
    async def embeddings(
        self,
        request: Request,
        x_model_version: str | None = Header(None, description="Pin a version."),
        x_routing_key: str | None = Header(
            None,
            max_length=ROUTING_KEY_MAX_CHARS,
            description="Sticky A/B: same key, same version.",
        ),
    ) -> Response:
        """Embed one text or a list of texts with the named model.

        Without a pinned version the model's traffic split picks one: at random by
        weight, or deterministically per routing key (`X-Routing-Key`, else `user`).
        """

        async def work(call: _Call) -> Response:
            body = await self._read_body(request)
            return await self._embed(call, body, x_model_version, x_routing_key)

        return await self._serve(request, "/v1/embeddings", False, work)

    async def embeddings_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /v1/embeddings` straight from ASGI (see `EmbeddingsRoute`): the same
        work as `embeddings`, without FastAPI's routing and parameter solving."""
        headers: dict[bytes, bytes] = dict(scope["headers"])
        request_id = _id_or_fresh(headers.get(b"x-request-id", b"").decode("latin-1"))
        pinned = headers.get(b"x-model-version")
        key = headers.get(b"x-routing-key")

        async def stream() -> AsyncIterator[bytes]:
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    raise BadRequest("body: the client went away")
                more = message.get("more_body", False)
                yield message.get("body", b"")

        async def work(call: _Call) -> Response:
            if key is not None and len(key) > ROUTING_KEY_MAX_CHARS:
                raise BadRequest(
                    "header.x-routing-key: String should have at most "
                    f"{ROUTING_KEY_MAX_CHARS} characters"
                )
            declared = headers.get(b"content-length", b"").decode("latin-1")
            body = await self._read_chunks(declared, stream())
            return await self._embed(
                call,
                body,
                pinned.decode("latin-1") if pinned is not None else None,
                key.decode("latin-1") if key is not None else None,
            )

        response = await self._serve(request_id, "/v1/embeddings", False, work)
        await response(scope, receive, send)

    async def _embed(
        self, call: _Call, raw: bytes, x_model_version: str | None, x_routing_key: str | None
    ) -> Response:
        body = parse_request(raw)
        call.model = body.model if body.model in self.args.models else "-"
        key = x_routing_key or body.user
        version = self.router.choose(body.model, x_model_version, "X-Model-Version", key)
        call.version = version
        texts = body.texts()
        call.inputs = len(texts)
        self._check_limits(texts, "input")
        if body.dimensions is not None:
            meta = await self._version_meta(body.model, version)
            if body.dimensions != meta["embedding_dim"]:
                dim = meta["embedding_dim"]
                raise BadRequest(f"dimensions: {body.model} returns {dim} dimensions")
        vectors, tokens = await self.router.embed(body.model, version, texts)
        if x_model_version is None:
            self.router.maybe_shadow(body.model, version, texts, vectors)
        content = encode_response(body.model, vectors, tokens, body.encoding_format)
        return Response(content, media_type="application/json")

    @api.get("/v1/models", summary="List served models", response_model=ModelList)
    async def list_models(self, request: Request) -> Response:
        """Every served model with its versions and their current traffic weights."""

        async def work(call: _Call) -> Response:
            data = [self.router.card(name, self.created, False) for name in self.args.models]
            return Response(
                orjson.dumps({"object": "list", "data": data}), media_type="application/json"
            )

        return await self._serve(request, "/v1/models", False, work)

    @api.get("/v1/models/{name}", summary="One model, with rollout state and recent figures")
    async def model_detail(self, request: Request, name: str) -> Response:
        """Versions, configured and effective weights, canary and shadow state, and the
        last minute's request rate, error rate and p95 per version, as seen by the
        ingress replica that answers."""

        async def work(call: _Call) -> Response:
            if name not in self.args.models:
                raise NotFound("model: not served here")
            call.model = name
            card = self.router.card(name, self.created, True)
            return Response(orjson.dumps(card), media_type="application/json")

        return await self._serve(request, "/v1/models/detail", False, work)

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
        """200 when every version with traffic has a ready replica, else 503."""
        ok = await self._all_ready(list(self.args.models))
        return Response(
            orjson.dumps({"ready": ok}),
            status_code=200 if ok else 503,
            media_type="application/json",
        )

    @api.get(
        "/v2/models/{name}",
        summary="Model metadata",
        response_model=oip.ModelMetadata,
        responses=_V2_ERRORS,
    )
    async def model_metadata(self, request: Request, name: str) -> Response:
        """Versions, platform and tensor signature of a model."""
        return await self._serve(
            request, "/v2/models/metadata", True, lambda c: self._metadata(c, name, None)
        )

    @api.get(
        "/v2/models/{name}/versions/{version}",
        summary="Model version metadata",
        response_model=oip.ModelMetadata,
        responses=_V2_ERRORS,
    )
    async def version_metadata(self, request: Request, name: str, version: str) -> Response:
        """Platform and tensor signature of one version."""
        return await self._serve(
            request, "/v2/models/metadata", True, lambda c: self._metadata(c, name, version)
        )

    @api.get("/v2/models/{name}/ready", summary="Model readiness", responses=_V2_ERRORS)
    async def model_ready(self, request: Request, name: str) -> Response:
        """200 when every version of the model with traffic has a ready replica."""

        async def work(call: _Call) -> Response:
            if name not in self.args.models:
                raise NotFound("model: not served here")
            call.model = name
            ok = await self._all_ready([name])
            body = orjson.dumps({"name": name, "ready": ok})
            return Response(body, status_code=200 if ok else 503, media_type="application/json")

        return await self._serve(request, "/v2/models/ready", True, work)

    @api.post(
        "/v2/models/{name}/infer",
        summary="Inference (traffic-split)",
        response_model=oip.InferenceResponse,
        responses=_V2_ERRORS,
        openapi_extra=_body_doc(oip.InferenceRequest, binary=True),
    )
    async def infer(
        self,
        request: Request,
        name: str,
        x_model_version: str | None = Header(None, description="Pin a version."),
    ) -> Response:
        """Embed a BYTES tensor of texts; JSON or binary tensor data both ways."""
        return await self._serve(
            request,
            "/v2/models/infer",
            True,
            lambda c: self._infer(c, request, name, x_model_version, "X-Model-Version"),
        )

    @api.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="Inference on a pinned version",
        response_model=oip.InferenceResponse,
        responses=_V2_ERRORS,
        openapi_extra=_body_doc(oip.InferenceRequest, binary=True),
    )
    async def infer_version(self, request: Request, name: str, version: str) -> Response:
        """Like `/infer`, on the version named in the path."""
        return await self._serve(
            request,
            "/v2/models/infer",
            True,
            lambda c: self._infer(c, request, name, version, "version"),
        )

    async def _infer(
        self, call: _Call, request: Request, name: str, pinned: str | None, source: str
    ) -> Response:
        key = request.headers.get("x-routing-key")
        version = self.router.choose(
            name, pinned, source, key[:ROUTING_KEY_MAX_CHARS] if key else None
        )
        call.model, call.version = name, version
        parsed = oip.parse_infer(
            await self._read_body(request), request.headers.get(oip.HEADER_LENGTH)
        )
        call.inputs = len(parsed.texts)
        if not parsed.texts:
            raise BadRequest("inputs.0: empty tensor")
        self._check_limits(parsed.texts, "inputs.0.data")
        vectors, _ = await self.router.embed(name, version, parsed.texts)
        if pinned is None:
            self.router.maybe_shadow(name, version, parsed.texts, vectors)
        content, headers = oip.encode_infer(
            name, version, parsed.request_id, vectors, parsed.binary_output
        )
        media = "application/octet-stream" if parsed.binary_output else "application/json"
        return Response(content, media_type=media, headers=headers)

    async def _metadata(self, call: _Call, name: str, version: str | None) -> Response:
        spec = self.args.models.get(name)
        if spec is None:
            raise NotFound("model: not served here")
        call.model = name
        if version is not None and version not in spec.versions:
            raise NotFound(f"version: {name} has no such version")
        target = version or self._primary(name)
        call.version = target
        meta = await self._version_meta(name, target)
        body = {
            "name": name,
            "versions": [version] if version else list(spec.versions),
            "platform": "onnxruntime_onnx" if meta["runtime"] == "onnx" else "pytorch_torchscript",
            "inputs": meta["inputs"],
            "outputs": meta["outputs"],
        }
        return Response(orjson.dumps(body), media_type="application/json")

    def _primary(self, model: str) -> str:
        weights = self.router.weights(model)
        if weights:
            return max(weights, key=lambda v: weights[v])
        return next(iter(self.args.models[model].versions))

    async def _version_meta(self, model: str, version: str) -> dict[str, Any]:
        key = (model, version)
        batcher = self.router.inline.get(key)
        if batcher is not None and key not in self._meta_cache:
            self._meta_cache[key] = runtime_metadata(batcher.runtime)
        if key not in self._meta_cache:
            self._meta_cache[key] = await call_version(
                self.handles[key], "metadata", (), READY_PROBE_TIMEOUT_S * 5, f"{model}/{version}"
            )
        return self._meta_cache[key]

    async def _all_ready(self, models: list[str]) -> bool:
        targets: list[tuple[str, str]] = []
        for model in models:
            weights = self.router.weights(model)
            if not weights:
                return False
            targets.extend((model, version) for version in weights)
        results = await asyncio.gather(*(self._version_ready(m, v) for m, v in targets))
        return all(results)

    async def _version_ready(self, model: str, version: str) -> bool:
        now = time.monotonic()
        cached = self._ready_cache.get((model, version))
        if cached and cached[1] > now:
            return cached[0]
        if (model, version) in self.router.inline:  # loaded before the replica started
            await self._version_meta(model, version)
            return True
        try:
            ok = bool(
                await call_version(
                    self.handles[(model, version)],
                    "ready",
                    (),
                    READY_PROBE_TIMEOUT_S,
                    f"{model}/{version}",
                )
            )
            if ok and (model, version) not in self._meta_cache:
                await self._version_meta(model, version)
        except ServekitError:
            ok = False
        self._ready_cache[(model, version)] = (ok, now + (READY_TTL_S if ok else NOT_READY_TTL_S))
        return ok


api.add_middleware(EmbeddingsRoute)
