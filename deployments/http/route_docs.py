"""What the OpenAPI document says a route answers: its error responses, each with the
error envelope and an example, and examples of its bodies.

A `/v1` or `/admin/v1` route lists the error statuses it can answer beyond those every
keyed route can (`ALWAYS`: the auth gate's 401 and 403, the rate limits' 429 and their
503 when they cannot be checked, and 500), and gives examples of its request and
success bodies next to their models (`model_config = ConfigDict(json_schema_extra=
example(...))`), or here when a route has no response model:

    @router.get("/v1/things/{id}", response_model=Thing, responses=responses(400, 404))
    @router.delete("/v1/things/{id}", responses=responses(404, example={"deleted": True}))

`tests/unit/servekit/test_openapi_docs.py` fails, naming the route, when one lacks them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, get_args

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import BaseRoute


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


class Status(NamedTuple):
    """How an error status is documented: why it comes, and an example body."""

    description: str
    code: str
    message: str
    headers: tuple[str, ...] = ()


RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}
RATE_LIMIT = {
    "description": "The tightest of the caller's limits and what is left of it "
    "(draft-ietf-httpapi-ratelimit-headers).",
    "schema": {"type": "string"},
}
WWW_AUTHENTICATE = {"description": "`Bearer`.", "schema": {"type": "string"}}
HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": RETRY_AFTER,
    "RateLimit": RATE_LIMIT,
    "RateLimit-Policy": RATE_LIMIT,
    "WWW-Authenticate": WWW_AUTHENTICATE,
}
STATUSES: dict[int, Status] = {
    400: Status(
        "The request is malformed or breaks a limit; the message names the field.",
        "invalid_request",
        "k: Input should be greater than or equal to 1",
    ),
    401: Status(
        "No API key, or one that is unknown, expired, revoked or of a disabled tenant.",
        "unauthorized",
        "a valid API key is required",
        ("WWW-Authenticate",),
    ),
    403: Status(
        "The key is valid but may not call this route or model; the message names the "
        "scope, model or right it lacks.",
        "forbidden",
        "scope: this route needs the 'search' scope, which this API key lacks",
    ),
    404: Status("No such resource (or not the caller's).", "not_found", "item: no such item"),
    409: Status(
        "The request conflicts with the resource's current state.",
        "conflict",
        "id: conflicts with the current state",
    ),
    413: Status(
        "The body is larger than `limits.max_body_bytes`.",
        "payload_too_large",
        "body: larger than the 1048576-byte limit",
    ),
    422: Status(
        "The request is well-formed but cannot be processed as it stands.",
        "unprocessable",
        "body: cannot be processed",
    ),
    429: Status(
        "Over a rate limit or the monthly quota.",
        "rate_limited",
        "requests per second exceeded: retry after 1 s",
        ("Retry-After", "RateLimit", "RateLimit-Policy"),
    ),
    500: Status(
        "An internal failure; the message carries only the request id.",
        "inference_failed",
        "internal error (request id 4bf92f3577b34da6a3ce929d0e0e4736)",
    ),
    503: Status(
        "Overloaded or briefly unavailable: retry after `Retry-After` seconds.",
        "overloaded",
        "minilm/v1: overloaded, retry later (request id 4bf92f3577b34da6a3ce929d0e0e4736)",
        ("Retry-After",),
    ),
    504: Status(
        "The model did not answer within `request_timeout_s`.",
        "timeout",
        "minilm/v1: no answer within 10 s (request id 4bf92f3577b34da6a3ce929d0e0e4736)",
    ),
}
# What every route behind an API key can answer: the auth gate (401, 403), the rate
# limits (429; 503 while they cannot be checked) and an unmapped failure (500).
ALWAYS = (401, 403, 429, 500, 503)
REQUEST_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def error_example(status: int) -> dict[str, Any]:
    """The error envelope `status` answers with, as an example."""
    spec = STATUSES[status]
    return {"error": {"code": spec.code, "message": spec.message, "request_id": REQUEST_ID}}


def _error(status: int) -> dict[str, Any]:
    spec = STATUSES[status]
    doc: dict[str, Any] = {
        "model": ErrorBody,
        "description": spec.description,
        "content": {"application/json": {"example": error_example(status)}},
    }
    if spec.headers:
        doc["headers"] = {name: HEADERS[name] for name in spec.headers}
    return doc


def responses(
    *statuses: int,
    example: Any = None,
    success: int = 200,
    errors: dict[int, dict[str, Any]] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: its error statuses (`ALWAYS` is added) documented with
    the error envelope and an example each; `example`: the success body's, for a route
    whose response model carries none; `errors`: a route's own example of an error body
    (one that adds fields to the envelope)."""
    unknown = sorted(set(statuses) - set(STATUSES))
    if unknown:
        raise ValueError(f"responses: no documentation for status {unknown[0]}")
    out: dict[int | str, dict[str, Any]] = {
        status: _error(status) for status in sorted({*statuses, *ALWAYS})
    }
    for status, body in (errors or {}).items():
        if status not in statuses:
            raise ValueError(f"responses: an example for {status}, which is not listed")
        out[status]["content"]["application/json"]["example"] = body
    if example is not None:
        out[success] = {"content": {"application/json": {"example": example}}}
    return out


def openapi_responses(*statuses: int) -> dict[str, dict[str, Any]]:
    """The same error responses as plain OpenAPI, for an operation documented by hand."""
    out: dict[str, dict[str, Any]] = {}
    for status, doc in responses(*statuses).items():
        plain = {key: value for key, value in doc.items() if key != "model"}
        plain["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
        out[str(status)] = plain
    return out


def example(*examples: dict[str, Any]) -> dict[str, Any]:
    """`json_schema_extra` giving a model's examples (request or response body)."""
    return {"examples": list(examples)}


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models an annotation names (`list[X]`, `X | None`...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models(arg)


def restore_examples(schema: dict[str, Any], routes: Iterable[BaseRoute]) -> None:
    """Put the routes' examples back as written: FastAPI drops every null from the
    document it builds, examples included, which leaves them short of required fields."""
    components = schema.get("components", {}).get("schemas", {})
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        body = route.body_field.field_info.annotation if route.body_field else None
        extra = [doc.get("model") for doc in route.responses.values()]
        for model in (m for a in (route.response_model, body, *extra) for m in _models(a)):
            given = model.model_config.get("json_schema_extra")
            if isinstance(given, dict) and "examples" in given:
                for name in (model.__name__, f"{model.__name__}-Input", f"{model.__name__}-Output"):
                    if name in components:
                        components[name]["examples"] = given["examples"]
        operations = schema["paths"].get(route.path_format, {})
        for method in route.methods or ():
            answers = operations.get(method.lower(), {}).get("responses", {})
            for status, doc in route.responses.items():
                media = doc.get("content", {}).get("application/json", {})
                if "example" in media and str(status) in answers:
                    answers[str(status)]["content"]["application/json"]["example"] = media[
                        "example"
                    ]
