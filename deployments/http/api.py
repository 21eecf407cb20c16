"""The FastAPI application: its OpenAPI document and how framework errors look.

Routes are declared on it by `deployments/ingress.py`. `POST /v1/embeddings` is
served straight from ASGI (`deployments/http/embeddings.py`), so its entry in the
document is written here from the same request and response models.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from deployments.errors import BadRequest, MethodNotAllowed, NotFound, ServekitError
from deployments.http import oip
from deployments.http.envelope import error_response, request_id
from deployments.http.openai import EmbeddingRequest, EmbeddingResponse

VERSION = "0.1.0"
ERROR_CODES = (400, 404, 413, 500, 503, 504)


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


V1_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in ERROR_CODES}
V2_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OipError} for code in ERROR_CODES}
_HAND_READ_BODIES = (EmbeddingRequest, EmbeddingResponse, ErrorBody, oip.InferenceRequest)


def body_doc(model: type[BaseModel], binary: bool = False) -> dict[str, Any]:
    """`openapi_extra` documenting a body read by hand (size limit first, then orjson)."""
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    }
    if binary:
        content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "JSON header of Inference-Header-Content-Length bytes, then tensors.",
        }
    return {"requestBody": {"required": True, "content": content}}


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


EMBEDDINGS_DOC: dict[str, Any] = {
    "summary": "Create embeddings (OpenAI-compatible)",
    "description": "Embed one text or a list of texts with the named model. Without a "
    "pinned version the model's traffic split picks one: at random by weight, or "
    "deterministically per routing key (`X-Routing-Key`, else `user`).",
    "operationId": "create_embeddings",
    "parameters": [
        {
            "name": "x-model-version",
            "in": "header",
            "required": False,
            "description": "Pin a version.",
            "schema": {"type": "string"},
        },
        {
            "name": "x-routing-key",
            "in": "header",
            "required": False,
            "description": "Sticky A/B: same key, same version.",
            "schema": {"type": "string", "maxLength": 256},
        },
    ],
    **body_doc(EmbeddingRequest),
    "responses": {
        "200": {"description": "Successful Response", **_ref("EmbeddingResponse")},
        **{str(code): {"description": "Error", **_ref("ErrorBody")} for code in ERROR_CODES},
    },
}


class ServekitAPI(FastAPI):
    """FastAPI whose OpenAPI document also describes the hand-read request bodies."""

    def openapi(self) -> dict[str, Any]:
        """Not cached: Serve rewrites the routes (the `self` parameter) after import,
        and the document must show the result."""
        schema = get_openapi(
            title=self.title, version=self.version, description=self.description, routes=self.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _HAND_READ_BODIES:
            doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in doc.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = doc
        schema["paths"]["/v1/embeddings"] = {"post": EMBEDDINGS_DOC}
        _document_auth(schema)
        _drop_empty_examples(schema)
        return schema


def _drop_empty_examples(node: Any) -> None:
    """Remove `example: {}`: Serve's rewrite of the routes gives every parameter and
    body one, saying nothing, so the served document equals the one built at import."""
    if isinstance(node, dict):
        if node.get("example") == {}:
            del node["example"]
        for value in node.values():
            _drop_empty_examples(value)
    elif isinstance(node, list):
        for value in node:
            _drop_empty_examples(value)


# Answered without a key unless `auth.exempt_paths` says otherwise.
PUBLIC_PATHS = ("/v2/health/live", "/v2/health/ready")


def _document_auth(schema: dict[str, Any]) -> None:
    """Bearer API keys on every operation but the probes, with their 401/403/429."""
    schema["components"]["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "A tenant API key (`sk-...`), or the operator credential.",
        }
    }
    schema["security"] = [{"apiKey": []}]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in PUBLIC_PATHS:
                operation["security"] = []
                continue
            responses = operation.setdefault("responses", {})
            for code in ("401", "403", "429"):
                responses.setdefault(code, {"description": "Error", **_ref("ErrorBody")})


api = ServekitAPI(
    title="servekit",
    version=VERSION,
    description=(
        "Model serving: OpenAI-compatible embeddings under /v1 and the Open Inference "
        "Protocol (KServe v2, with the binary tensor extension) under /v2. Every "
        "response carries X-Request-ID and, when a model ran, X-Model-Version."
    ),
)


def _framework_error(request: Request, error: ServekitError) -> Response:
    rid = request_id(request.headers.get("x-request-id"))
    return error_response(error, rid, request.url.path.startswith("/v2"))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    errors = exc.errors() or [{"loc": (), "msg": "invalid request"}]
    # Unknown fields first: they usually explain the rest (a misspelt field name).
    first = sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")[0]
    loc = [str(p) for p in first.get("loc", ())]
    if len(loc) > 1 and loc[0] in ("body", "query", "path"):
        loc = loc[1:]  # the field's own name, as the /v1 routes read by hand say it
    where = ".".join(loc) or "body"
    if first.get("type") == "extra_forbidden":
        return _framework_error(request, BadRequest(f"{where}: unknown field"))
    return _framework_error(request, BadRequest(f"{where}: {first.get('msg', 'invalid')}"))


@api.exception_handler(HTTPException)
async def _http(request: Request, exc: HTTPException) -> Response:
    error: ServekitError = BadRequest(str(exc.detail))
    if exc.status_code == 404:
        error = NotFound("no such route")
    elif exc.status_code == 405:
        error = MethodNotAllowed("method not allowed on this route")
    return _framework_error(request, error)
