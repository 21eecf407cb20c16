"""The FastAPI application: its OpenAPI document and how framework errors look.

Routes are declared on it by `deployments/ingress.py`. `POST /v1/embeddings` is
served straight from ASGI (`deployments/http/embeddings.py`), so its entry in the
document is written here from the same request and response models.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp

from configs.schema import Limits
from deployments.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    ServekitError,
    request_invalid,
)
from deployments.http import deprecation, oip
from deployments.http.envelope import API_VERSION_HEADER, BodyLimit, error_response, request_id
from deployments.http.openai import EmbeddingRequest, EmbeddingResponse
from deployments.http.route_docs import (
    STATUSES,
    ErrorBody,
    OipError,
    openapi_responses,
    restore_examples,
)

__all__ = ["ERROR_CODES", "V2_ERRORS", "VERSION", "ErrorBody", "OipError", "api", "body_doc"]

VERSION = "0.1.0"
ERROR_CODES = (400, 404, 413, 500, 503, 504)
V2_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OipError} for code in ERROR_CODES}
_HAND_READ_BODIES = (EmbeddingRequest, EmbeddingResponse, ErrorBody, OipError, oip.InferenceRequest)


def body_doc(model: type[BaseModel], binary: bool = False) -> dict[str, Any]:
    """`openapi_extra` documenting a body read by hand (size limit first, then orjson)."""
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    }
    if binary:
        content["application/octet-stream"] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "JSON header of Inference-Header-Content-Length bytes, "
                "then tensors.",
            }
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
        **openapi_responses(400, 404, 413, 504),
    },
}


class ServekitAPI(FastAPI):
    """FastAPI whose OpenAPI document also describes the hand-read request bodies, and
    whose every response carries the contract's headers (API version, deprecation)."""

    def build_middleware_stack(self) -> ASGIApp:
        """Starlette's stack, inside `ContractHeaders` (outermost: the auth gate's
        refusals and the embeddings fast path's answers carry the headers too)."""
        return deprecation.ContractHeaders(super().build_middleware_stack(), lambda: self.routes)

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
        restore_examples(schema, self.routes)
        _document_auth(schema)
        _drop_unanswered_422(schema)
        deprecation.document(schema, self.routes)
        _document_api_version(schema)
        _drop_empty_examples(schema)
        return schema


def _drop_unanswered_422(schema: dict[str, Any]) -> None:
    """Remove the 422 FastAPI documents for every route with parameters: validation
    errors answer 400 with the error envelope here (see `_invalid`)."""
    validation = "#/components/schemas/HTTPValidationError"
    for operations in schema["paths"].values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422", {})
            if response.get("content", {}).get("application/json", {}).get("schema") == {
                "$ref": validation
            }:
                del operation["responses"]["422"]
    if validation not in json.dumps(schema["paths"]):
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)


def _document_api_version(schema: dict[str, Any]) -> None:
    """Every response carries `API-Version` (see `deprecation.ContractHeaders`)."""
    schema["components"]["headers"] = {
        API_VERSION_HEADER: {
            "description": "The version of servekit's API that answered (`/v1` only grows).",
            "schema": {"type": "string", "example": "1"},
        }
    }
    ref = {"$ref": f"#/components/headers/{API_VERSION_HEADER}"}
    for operations in schema["paths"].values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                response.setdefault("headers", {})[API_VERSION_HEADER] = ref


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
            for code, doc in _refusals(path.startswith("/v2")).items():
                responses.setdefault(code, doc)


def _refusals(oip_route: bool) -> dict[str, dict[str, Any]]:
    """The auth gate's and the rate limits' refusals, in the route's error shape."""
    if not oip_route:
        return openapi_responses()
    out = {}
    for code, doc in openapi_responses().items():
        if int(code) in (401, 403, 429):
            example = {"error": STATUSES[int(code)].message}
            content = {"schema": {"$ref": "#/components/schemas/OipError"}, "example": example}
            out[code] = {**doc, "content": {"application/json": content}}
    return out


api = ServekitAPI(
    title="servekit",
    version=VERSION,
    description=(
        "Model serving: OpenAI-compatible embeddings under /v1 and the Open Inference "
        "Protocol (KServe v2, with the binary tensor extension) under /v2. Every "
        "response carries X-Request-ID and, when a model ran, X-Model-Version."
    ),
)


def _framework_error(
    request: Request, error: ServekitError, headers: dict[str, str] | None = None
) -> Response:
    rid = request_id(request.headers.get("x-request-id"))
    return error_response(error, rid, request.url.path.startswith("/v2"), headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    return _framework_error(request, request_invalid(exc.errors()))


def _body_limit() -> int:
    """The replica's `limits.max_body_bytes` (outside a replica, the default's)."""
    global _BODY_LIMIT
    if _BODY_LIMIT is None:
        try:
            host: Any = serve.get_replica_context().servable_object
        except RayServeException:  # not inside a Serve replica
            return DEFAULT_BODY_LIMIT
        _BODY_LIMIT = int(host.args.limits.max_body_bytes)
    return _BODY_LIMIT


DEFAULT_BODY_LIMIT: int = Limits.model_fields["max_body_bytes"].default
_BODY_LIMIT: int | None = None
# Added first, so innermost of the middleware: inside `HotRoutes`, whose routes bound
# their bodies themselves, at no cost to them.
api.add_middleware(BodyLimit, limit=_body_limit)


def _body_error(exc: HTTPException) -> ServekitError | None:
    """What went wrong reading a body FastAPI parses, when it failed there: FastAPI
    answers every failure but invalid JSON as 400 "There was an error parsing the
    body", with the failure as its cause (the body over the limit, not UTF-8, nested
    past what the JSON reader takes)."""
    cause = exc.__cause__
    if isinstance(cause, ServekitError):
        return cause
    if isinstance(cause, ClientDisconnect):
        return BadRequest("body: the client went away")
    if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
        return BadRequest("body: not valid JSON")
    return None


_FASTAPI_BODY_ERROR = "There was an error parsing the body"


@api.exception_handler(HTTPException)
async def _http(request: Request, exc: HTTPException) -> Response:
    error: ServekitError = _body_error(exc) or BadRequest(str(exc.detail))
    if exc.status_code == 404:
        error = NotFound("no such route")
    elif exc.status_code == 405:
        error = MethodNotAllowed("method not allowed on this route")
    # Starlette's own headers: a 405's `Allow` names the methods the route takes.
    return _framework_error(request, error, dict(exc.headers or {}))
