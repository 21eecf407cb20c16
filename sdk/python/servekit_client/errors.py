"""Exceptions: every one carries the request id; an HTTP error also its status, the
service's error code and message. `error_for` is the one place a response becomes one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import ValidationError

from servekit_client._retry import field_named, retry_after_s
from servekit_client.models import EventsResult
from servekit_client.response import REQUEST_ID_HEADER, RateLimit

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "DeprecatedRouteWarning",
    "GatewayTimeoutError",
    "InternalServerError",
    "InvalidArgumentError",
    "InvalidEventsError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServekitError",
    "ServiceUnavailableError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
]

MAX_TEXT_CHARS = 200


class ServekitError(Exception):
    """Base of every exception this package raises."""


class InvalidArgumentError(ServekitError, ValueError):
    """An argument or setting refused before anything is sent, so never retried: a value
    an HTTP header cannot carry (the API key, `routing_key`, `model_version`), a number
    JSON cannot carry (NaN, an infinity), a base URL without http(s). The message names
    the parameter and never shows its value. Also a `ValueError`, as Python's own
    refusals of an argument are."""


def _rebuilt(cls: type[APIError], state: dict[str, Any]) -> APIError:
    """An exception from its attributes (what `pickle` and `copy` call)."""
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class APIError(ServekitError):
    """A call that did not succeed; `request_id` finds it in the service's logs."""

    def __init__(self, message: str, *, request_id: str) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled and copied by attributes: the constructors take keywords, which the
        default (positional `args`) cannot give back; so errors cross process pools."""
        return (_rebuilt, (type(self), dict(self.__dict__)))

    def __str__(self) -> str:
        return f"{self.message} (request id {self.request_id})"


class APIConnectionError(APIError):
    """No HTTP answer: the service could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class APIStatusError(APIError):
    """The service answered with an error status. `field`: the request field, parameter
    or header servekit's message names first (`items.0.attributes.price`,
    `header.x-routing-key`, `events.1.type`); None when it names none, or when the
    answer is not servekit's (a proxy's page)."""

    status: int
    field: str | None

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        request_id: str,
        headers: Mapping[str, str],
        body: Any,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status = status
        self.code = code
        self.field = None if code.startswith("http_") else field_named(message)
        self.headers = httpx.Headers(headers)
        self.body = body

    @property
    def retry_after_s(self) -> float | None:
        """Seconds the service asked the caller to wait (`Retry-After`), if it said."""
        return retry_after_s(self.headers.get("retry-after"))

    @property
    def rate_limit(self) -> RateLimit | None:
        """The caller's tightest limit as the answer said it (`RateLimit`,
        `RateLimit-Policy`): with a 429, the policy that refused it."""
        return RateLimit.from_headers(self.headers)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message} (request id {self.request_id})"


class UnexpectedResponseError(APIError):
    """A success whose body is not the route's documented shape (a proxy's page, or a
    service newer than this package in a way `/v1` promises not to be)."""

    def __init__(self, status: int, error: ValidationError, *, request_id: str) -> None:
        first = error.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        super().__init__(f"{status} response: {where}: {first['msg']}", request_id=request_id)
        self.status = status


class BadRequestError(APIStatusError):
    """400: the request is malformed or breaks a limit; the message names the field."""


class InvalidEventsError(BadRequestError):
    """400 `invalid_events`: some events of a batch were refused, the rest were kept;
    `result` says how many and which."""

    def __init__(self, *, result: EventsResult, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result = result


class AuthenticationError(APIStatusError):
    """401: no API key, or one that is unknown, expired or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the key is valid but may not do this."""


class NotFoundError(APIStatusError):
    """404: no such route, model, catalog, item, tenant or key."""


class MethodNotAllowedError(APIStatusError):
    """405."""


class ConflictError(APIStatusError):
    """409."""


class PayloadTooLargeError(APIStatusError):
    """413: the body is over the service's limit."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429: over a rate limit or the monthly quota; see `retry_after_s`."""


class InternalServerError(APIStatusError):
    """5xx the other classes do not name."""


class ServiceUnavailableError(InternalServerError):
    """503: overloaded or not ready; see `retry_after_s`."""


class GatewayTimeoutError(InternalServerError):
    """504: the model call did not finish within the service's request timeout."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def error_for(response: httpx.Response, sent_request_id: str) -> APIStatusError:
    """The exception for an error response: servekit's `{"error": {code, message,
    request_id}}`, or whatever a proxy in between answered."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code = str(detail.get("code") or f"http_{status}")
        message = str(detail.get("message") or response.reason_phrase)
        request_id = str(detail.get("request_id") or "")
    else:  # not servekit's envelope: an HTTP proxy's page, or an empty body
        code = f"http_{status}"
        message = (detail if isinstance(detail, str) else response.text[:MAX_TEXT_CHARS]) or (
            response.reason_phrase
        )
        request_id = ""
    request_id = request_id or response.headers.get(REQUEST_ID_HEADER) or sent_request_id
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code,
        "message": message,
        "request_id": request_id,
        "headers": response.headers,
        "body": body,
    }
    if status == 400 and code == "invalid_events" and isinstance(body, dict):
        doc = {k: v for k, v in body.items() if k != "error"}
        try:
            return InvalidEventsError(result=EventsResult.model_validate(doc), **kwargs)
        except ValidationError:  # not the events route's shape: a plain 400
            pass
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    return cls(**kwargs)


class DeprecatedRouteWarning(FutureWarning):
    """A route the service marks deprecated was called. A `FutureWarning`, which
    Python shows by default wherever it is raised (a `DeprecationWarning` is hidden
    outside `__main__`, so a backend calling the route would never see it); silence
    it with `warnings.filterwarnings("ignore", category=DeprecatedRouteWarning)`."""
