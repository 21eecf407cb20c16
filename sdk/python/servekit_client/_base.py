"""What the sync and async clients share: settings from arguments or the environment,
the routes, building a request and turning a response into a model or an exception."""

from __future__ import annotations

import dataclasses
import os
import uuid
import warnings
from datetime import date, datetime, timezone
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from servekit_client._retry import RetryPolicy
from servekit_client.errors import (
    REQUEST_ID_HEADER,
    APIConnectionError,
    APITimeoutError,
    DeprecatedRouteWarning,
    UnexpectedResponseError,
    error_for,
)

__version__ = "0.1.0"
API_KEY_ENV = "SERVEKIT_API_KEY"
BASE_URL_ENV = "SERVEKIT_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
USER_AGENT = f"servekit-client-python/{__version__}"

T = TypeVar("T")
TimeoutLike = float | httpx.Timeout | None


class Route(Generic[T]):
    """One operation of the API: method, path template (as the OpenAPI document writes
    it), whether repeating it is harmless, and its response type."""

    def __init__(self, method: str, path: str, response: Any, *, idempotent: bool) -> None:
        self.method = method
        self.path = path
        self.response = response
        self.idempotent = idempotent
        self.adapter: TypeAdapter[T] = TypeAdapter(response)

    def __repr__(self) -> str:
        return f"Route({self.method} {self.path})"


@dataclasses.dataclass(frozen=True)
class Settings:
    """A client's resolved settings."""

    base_url: str
    api_key: str | None
    timeout: httpx.Timeout
    retry: RetryPolicy
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def resolve(
    api_key: str | None,
    base_url: str | None,
    timeout: TimeoutLike,
    max_retries: int | None,
    retry: RetryPolicy | None,
) -> Settings:
    """Arguments first, then `SERVEKIT_API_KEY` / `SERVEKIT_URL`, then the defaults."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    key = key.strip() if key else None
    url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("base_url: must start with http:// or https://")
    policy = retry or RetryPolicy()
    if max_retries is not None:
        policy = dataclasses.replace(policy, max_retries=max_retries)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return Settings(url, key, as_timeout(timeout), policy, headers)


def with_options(settings: Settings, timeout: TimeoutLike, max_retries: int | None) -> Settings:
    """The settings with another timeout or retry count."""
    if timeout is not None:
        settings = dataclasses.replace(settings, timeout=as_timeout(timeout))
    if max_retries is not None:
        retry = dataclasses.replace(settings.retry, max_retries=max_retries)
        settings = dataclasses.replace(settings, retry=retry)
    return settings


def as_timeout(timeout: TimeoutLike) -> httpx.Timeout:
    """An httpx timeout from seconds (every phase), a Timeout, or None (the default)."""
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(float(timeout), connect=min(float(timeout), 5.0))


def body(**fields: Any) -> dict[str, Any]:
    """A JSON body from keyword arguments; None means "left out" (the service default)."""
    doc = {name: value for name, value in fields.items() if value is not None}
    out: dict[str, Any] = to_jsonable_python(doc, exclude_none=True)
    return out


def day(value: date | str | None) -> str | None:
    """A query parameter's UTC day (a `datetime` is a `date` too: its UTC day; a naive
    one is taken as UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.date().isoformat()
    return value.isoformat() if isinstance(value, date) else value


def query(**params: str | None) -> dict[str, str]:
    """Query parameters, those left out dropped."""
    return {name: value for name, value in params.items() if value is not None}


def path(route: Route[Any], **params: str) -> str:
    """The route's path with its parameters filled in, each percent-encoded. An empty
    value, `.` or `..` is refused: a URL cannot carry it as a segment (`..` would climb
    to another route)."""
    for name, value in params.items():
        if str(value) in ("", ".", ".."):
            raise ValueError(f"{name}: {str(value)!r} cannot be sent as a URL path segment")
    return route.path.format(**{name: quote(str(v), safe="") for name, v in params.items()})


def pin_headers(model_version: str | None, routing_key: str | None) -> dict[str, str]:
    """`X-Model-Version` (pin a version) and `X-Routing-Key` (sticky A/B)."""
    headers = {}
    if model_version is not None:
        headers["X-Model-Version"] = model_version
    if routing_key is not None:
        headers["X-Routing-Key"] = routing_key
    return headers


def build(
    http: httpx.Client | httpx.AsyncClient,
    route: Route[Any],
    url: str,
    json: Any,
    params: dict[str, str] | None,
    headers: dict[str, str] | None,
    timeout: httpx.Timeout,
) -> tuple[httpx.Request, str]:
    """The request (sent as is on every attempt) and its request id: the same id on
    every attempt, so the service's logs show a call's retries together."""
    rid = uuid.uuid4().hex
    request = http.build_request(
        route.method,
        url,
        json=json,
        params=params,
        headers={**(headers or {}), REQUEST_ID_HEADER: rid},
        timeout=timeout,
    )
    return request, rid


def finish(route: Route[T], response: httpx.Response, rid: str) -> T:
    """The typed result of a response, or the exception for it."""
    if response.status_code >= 400:
        raise error_for(response, rid)
    _warn_deprecated(route, response)
    try:
        return route.adapter.validate_json(response.content)
    except ValidationError as e:
        got = response.headers.get(REQUEST_ID_HEADER) or rid
        raise UnexpectedResponseError(response.status_code, e, request_id=got) from e


def connection_error(error: httpx.TransportError, rid: str) -> APIConnectionError:
    """The exception for a call that got no HTTP answer."""
    name = type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"no answer within the timeout ({name})", request_id=rid)
    return APIConnectionError(f"connection failed ({name}: {error})", request_id=rid)


def _warn_deprecated(route: Route[Any], response: httpx.Response) -> None:
    """A route the service marks deprecated (`Deprecation`, RFC 9745) warns once per call
    site, naming its `Sunset` (RFC 8594) when it has one."""
    if "deprecation" not in response.headers:
        return
    sunset = response.headers.get("sunset")
    until = f"; it goes away after {sunset}" if sunset else ""
    warnings.warn(
        f"{route.method} {route.path} is deprecated{until}", DeprecatedRouteWarning, stacklevel=5
    )
