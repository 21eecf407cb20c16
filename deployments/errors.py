"""Errors that carry their HTTP status; `deployments/http/envelope.py` is the one place
they become responses.

A 4xx message names the field or header at fault and never echoes what the caller
sent. A 5xx message says only what a caller can act on, plus the request id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError


class ServekitError(Exception):
    """Base of every error the ingress turns into a response."""

    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}  # noqa: RUF012 - overridden per class, never mutated

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServekitError):
    """The request is malformed or breaks a limit."""

    status = 400
    code = "invalid_request"


class TooManyInputs(BadRequest):
    """More inputs than `limits.max_inputs_per_request`."""

    code = "too_many_inputs"


class InputTooLong(BadRequest):
    """A text longer than `limits.max_input_chars`."""

    code = "input_too_long"


class PayloadTooLarge(ServekitError):
    """The body is larger than `limits.max_body_bytes`."""

    status = 413
    code = "payload_too_large"


class NotFound(ServekitError):
    """No such model, version or route."""

    status = 404
    code = "not_found"


class Conflict(ServekitError):
    """The request conflicts with the resource's current state."""

    status = 409
    code = "conflict"


class Overloaded(ServekitError):
    """Queues are full: retry later."""

    status = 503
    code = "overloaded"
    headers = {"Retry-After": "1"}  # noqa: RUF012


class Unavailable(ServekitError):
    """The version has no live replica right now."""

    status = 503
    code = "unavailable"
    headers = {"Retry-After": "2"}  # noqa: RUF012


class Timeout(ServekitError):
    """The model call did not finish within `request_timeout_s`."""

    status = 504
    code = "timeout"


class InferenceFailed(ServekitError):
    """The model raised; details are in the replica's log, never in the response."""

    status = 500
    code = "inference_failed"


# The most of a name the caller chose (an unknown field's, an attribute's) a message
# repeats: a key of 100,000 characters must not come back as a 100,000-character 400.
MAX_NAME_CHARS = 64


def field_path(loc: Sequence[object]) -> str:
    """`loc` as a message names it (`items.0.attributes.price`), each part cut to
    `MAX_NAME_CHARS`."""
    return ".".join(str(part)[:MAX_NAME_CHARS] for part in loc)


def _first_error(errors: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The error a 400 names: unknown fields first, as they usually explain the rest (a
    misspelt field name); else the first reported."""
    return sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")[0]


def from_validation_error(error: ValidationError, prefix: str = "") -> BadRequest:
    """A 400 naming the first invalid field, without the offending value."""
    first = _first_error(error.errors(include_input=False, include_url=False))
    loc = field_path(first["loc"])
    where = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "body")
    if first["type"] == "extra_forbidden":
        return BadRequest(f"{where}: unknown field")
    if first["type"] == "missing":
        return BadRequest(f"{where}: field required")
    return BadRequest(f"{where}: {first['msg']}")


def request_invalid(errors: Sequence[Mapping[str, Any]]) -> BadRequest:
    """A 400 naming the first invalid field of a request's parameters or body, as
    FastAPI's validation reports them (`loc` starting with `body`, `query` or `path`);
    without the offending value."""
    first = _first_error(errors or [{"loc": (), "msg": "invalid request"}])
    if first.get("type") == "json_invalid":  # its `loc` is a character offset, no field
        return BadRequest("body: not valid JSON")
    loc = list(first.get("loc", ()))
    if len(loc) > 1 and loc[0] in ("body", "query", "path"):
        loc = loc[1:]  # the field's own name, as the /v1 routes read by hand say it
    where = field_path(loc) or "body"
    if first.get("type") == "extra_forbidden":
        return BadRequest(f"{where}: unknown field")
    # A check of servekit's own (a validator's ValueError) in its words, without the
    # validation library's "Value error, " in front.
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return BadRequest(f"{where}: {message}")


class MethodNotAllowed(ServekitError):
    """The route exists, not with this method."""

    status = 405
    code = "method_not_allowed"


class Unauthorized(ServekitError):
    """No API key, or one that is unknown, expired or revoked (never says which)."""

    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012

    def __init__(self, message: str = "a valid API key is required") -> None:
        super().__init__(message)


class Forbidden(ServekitError):
    """The key is valid but may not do this (never says which right is missing)."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str = "this API key may not do that") -> None:
        super().__init__(message)


class RateLimited(ServekitError):
    """Over a rate limit or the monthly quota: retry after `Retry-After` seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers
