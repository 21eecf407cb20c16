"""What the sync and async clients share: settings from arguments or the environment,
the routes, building a request and turning a response into a model or an exception."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import uuid
import warnings
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any, Generic, Literal, TypeVar, cast
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from servekit_client._retry import RetryPolicy
from servekit_client.errors import (
    APIConnectionError,
    APITimeoutError,
    DeprecatedRouteWarning,
    InvalidArgumentError,
    UnexpectedResponseError,
    error_for,
)
from servekit_client.models import ApiModel, Embeddings
from servekit_client.response import REQUEST_ID_HEADER, ResponseInfo, ResponseList

__version__ = "0.1.0"
API_KEY_ENV = "SERVEKIT_API_KEY"
BASE_URL_ENV = "SERVEKIT_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
USER_AGENT = f"servekit-client-python/{__version__}"

NO_API_KEY = "no API key: pass `api_key` or set SERVEKIT_API_KEY (api_key=False sends none)"

T = TypeVar("T")
# `api_key`: a key; None: SERVEKIT_API_KEY's; False: send none (a service with auth off).
ApiKeyArg = str | Literal[False] | None
TimeoutLike = float | httpx.Timeout | None
# A credential as a transport's error text may show it: `Bearer <token>`.
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s'\",)]+")
REDACTED = "[redacted]"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 128  # the longest key the service keeps
# An API key: visible ASCII, nothing else. A header value: that and inner spaces.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_NOT_IN_A_HEADER = re.compile(r"[^\x20-\x7e]")
# A code point of the surrogate range: in a Python str, always an unpaired one.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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
    """A client's resolved settings; the key and the headers that carry it are left out
    of the repr."""

    base_url: str
    api_key: str | None = dataclasses.field(repr=False)
    timeout: httpx.Timeout
    retry: RetryPolicy
    headers: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)


def resolve(
    api_key: ApiKeyArg,
    base_url: str | None,
    timeout: TimeoutLike,
    max_retries: int | None,
    retry: RetryPolicy | None,
) -> Settings:
    """Arguments first, then `SERVEKIT_API_KEY` / `SERVEKIT_URL` (an empty URL: unset),
    then the defaults. No key at all (unless `api_key=False`), a key that is not visible
    ASCII, or a URL that is not http(s) with a host, is refused here, before any call."""
    key = _api_key(api_key)
    url_from = "base_url" if base_url else BASE_URL_ENV
    url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
    if not _http_url(url):
        raise InvalidArgumentError(f"{url_from}: must be an http:// or https:// URL with a host")
    policy = retry or RetryPolicy()
    if max_retries is not None:
        policy = dataclasses.replace(policy, max_retries=max_retries)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return Settings(url, key, as_timeout(timeout), policy, headers)


def _api_key(api_key: ApiKeyArg) -> str | None:
    """The key to send (None: none, only when `api_key=False` says so). Outer whitespace
    is dropped; a missing or empty key is refused, as is one an HTTP header cannot carry
    (without showing it): a client that silently sent no key would meet a 401 on its
    first call, far from the setting that was wrong."""
    if api_key is False:
        return None
    if api_key is not None and not isinstance(api_key, str):
        raise InvalidArgumentError("api_key: must be a string, None or False")
    source = "api_key" if api_key is not None else API_KEY_ENV
    key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")).strip()
    if not key:
        raise InvalidArgumentError(NO_API_KEY)
    if not _VISIBLE_ASCII.fullmatch(key):
        raise InvalidArgumentError(
            f"{source}: has a space, a control character or a non-ASCII character inside;"
            " an API key is visible ASCII (the key is not shown)"
        )
    return key


def with_options(settings: Settings, timeout: TimeoutLike, max_retries: int | None) -> Settings:
    """The settings with another timeout or retry count."""
    if timeout is not None:
        settings = dataclasses.replace(settings, timeout=as_timeout(timeout))
    if max_retries is not None:
        retry = dataclasses.replace(settings.retry, max_retries=max_retries)
        settings = dataclasses.replace(settings, retry=retry)
    return settings


def _http_url(url: str) -> bool:
    if not url.startswith(("http://", "https://")):
        return False
    try:
        return bool(httpx.URL(url).host)
    except httpx.InvalidURL:
        return False


def as_timeout(timeout: TimeoutLike) -> httpx.Timeout:
    """An httpx timeout from seconds (every phase), a Timeout, or None (the default)."""
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(float(timeout), connect=min(float(timeout), 5.0))


def body(**fields: Any) -> dict[str, Any]:
    """A JSON body from keyword arguments; None means "left out" (the service default).
    NaN and the infinities, which JSON has no number for, text with a lone surrogate,
    which UTF-8 has no bytes for, and a datetime without a time zone, which the service
    refuses, are refused, naming where."""
    doc = {name: value for name, value in fields.items() if value is not None}
    return _jsonable(doc, "", exclude_none=True)


def limits_patch(limits: Any) -> dict[str, Any] | None:
    """A tenant PATCH's `limits`: the fields named, and only those (the service keeps the
    others); a field named with None is sent as null, which removes that limit. From a
    `Limits` model, the fields set on it; from a mapping, its keys."""
    if limits is None:
        return None
    named = limits.model_dump(exclude_unset=True) if hasattr(limits, "model_dump") else dict(limits)
    return _jsonable(named, "limits")


def _jsonable(doc: dict[str, Any], where: str, exclude_none: bool = False) -> dict[str, Any]:
    """`doc` as JSON-ready values, refusing what cannot be sent, naming where under
    `where`: checked as given (before pydantic, which fails on a key with a lone
    surrogate), then as converted."""
    _refuse_unsendable_as_given(doc, where)
    out: dict[str, Any] = to_jsonable_python(doc, exclude_none=exclude_none)
    _refuse_unsendable(out, where)
    return out


def _refuse_unsendable(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        name = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        raise InvalidArgumentError(f"{where}: {name} cannot be sent (JSON has no such number)")
    if isinstance(value, str):
        refuse_lone_surrogate(where, value)
    elif isinstance(value, dict):
        for key, inner in value.items():
            _refuse_unsendable(inner, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            _refuse_unsendable(inner, f"{where}.{n}")


def _refuse_unsendable_as_given(value: Any, where: str) -> None:
    """What JSON conversion would lose, checked in `value` as given (lists, tuples,
    dicts): a key with a lone surrogate, naming the mapping that has it (not the key),
    and a datetime without a time zone (an event's `timestamp` from `datetime.now()`),
    which the service refuses, keeping the rest of the batch."""
    if isinstance(value, datetime) and value.utcoffset() is None:
        raise InvalidArgumentError(
            f"{where}: a datetime without a time zone cannot be sent (the service needs"
            " one: datetime.now(timezone.utc), say)"
        )
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if isinstance(key, str):
                refuse_lone_surrogate(where or "body", key, "a key ")
            _refuse_unsendable_as_given(inner, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for n, inner in enumerate(value):
            _refuse_unsendable_as_given(inner, f"{where}.{n}")


def refuse_lone_surrogate(where: str, text: str, subject: str = "") -> None:
    """Refuse text with a lone surrogate (U+D800 to U+DFFF unpaired, as a decoder with
    `surrogateescape` or a JavaScript string cut mid-pair leaves it): it is not Unicode
    text, so UTF-8, and a request, has no bytes for it. Never shows the text."""
    if _LONE_SURROGATE.search(text) is not None:
        raise InvalidArgumentError(
            f"{where}: {subject}has a lone surrogate, which is not Unicode text and cannot be sent"
        )


def names(param: str, values: Sequence[str] | None) -> list[str] | None:
    """A list parameter's values as a list. One string is refused: it is a sequence of
    strings too, so it would be sent as its characters (`models="minilm"`: a key for
    the models `m`, `i`, `n`, `l`)."""
    if values is None:
        return None
    if isinstance(values, str):
        raise InvalidArgumentError(f"{param}: must be a list of strings, not one string")
    return list(values)


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
    for name, value in params.items():
        if value is not None:
            refuse_lone_surrogate(name, value)
    return {name: value for name, value in params.items() if value is not None}


def path(route: Route[Any], **params: str) -> str:
    """The route's path with its parameters filled in, each percent-encoded. An empty
    value, `.` or `..` is refused: a URL cannot carry it as a segment (`..` would climb
    to another route)."""
    for name, value in params.items():
        if str(value) in ("", ".", ".."):
            raise InvalidArgumentError(
                f"{name}: {str(value)!r} cannot be sent as a URL path segment"
            )
        refuse_lone_surrogate(name, str(value))
    return route.path.format(**{name: quote(str(v), safe="") for name, v in params.items()})


def pin_headers(model_version: str | None, routing_key: str | None) -> dict[str, str]:
    """`X-Model-Version` (pin a version) and `X-Routing-Key` (sticky A/B), each checked
    to be a value an HTTP header carries as is."""
    headers = {}
    if model_version is not None:
        headers["X-Model-Version"] = header_value("model_version", "X-Model-Version", model_version)
    if routing_key is not None:
        headers["X-Routing-Key"] = header_value("routing_key", "X-Routing-Key", routing_key)
    return headers


def idempotency_headers(key: str | None) -> dict[str, str]:
    """`Idempotency-Key`: the service stores a batch of events once per key (for 24 h);
    1 to 128 characters a header carries as they are."""
    if key is None:
        return {}
    value = header_value("idempotency_key", IDEMPOTENCY_KEY_HEADER, key)
    if not 0 < len(value) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidArgumentError(
            f"idempotency_key: must be 1 to {MAX_IDEMPOTENCY_KEY} characters, has {len(value)}"
        )
    return {IDEMPOTENCY_KEY_HEADER: value}


def header_value(name: str, header: str, value: object) -> str:
    """`value`, when the `header` it is sent as can carry it unchanged: visible ASCII
    and inner spaces (HTTP drops outer ones; anything else is refused on the way or
    arrives as other characters). Refused naming the parameter, never showing it (a
    routing key is often a user's id)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name}: must be a string")
    bad = _NOT_IN_A_HEADER.search(value)
    if bad is not None:
        raise InvalidArgumentError(
            f"{name}: cannot be sent as the {header} header: the character at index"
            f" {bad.start()} is not visible ASCII (hash or percent-encode such a value)"
        )
    if value != value.strip(" "):
        raise InvalidArgumentError(
            f"{name}: cannot be sent as the {header} header: it begins or ends with a space,"
            " which HTTP drops"
        )
    return value


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
    """The typed result of a response, with what its headers said (`.response`), or
    the exception for it."""
    if response.status_code >= 400:
        raise error_for(response, rid)
    _warn_deprecated(route, response)
    try:
        result = route.adapter.validate_json(response.content)
    except ValidationError as e:
        got = response.headers.get(REQUEST_ID_HEADER) or rid
        raise UnexpectedResponseError(response.status_code, e, request_id=got) from e
    return answered(result, response, rid)


def answered(result: T, response: httpx.Response, rid: str) -> T:
    """`result` with `.response`: the status and headers of the answer it came from (a
    list as a `ResponseList`)."""
    info = ResponseInfo.of(response, rid)
    _served_version(result, info)
    if isinstance(result, ApiModel):
        object.__setattr__(result, "_response", info)
    elif isinstance(result, list):
        listed: Any = ResponseList(result, info)
        return cast(T, listed)
    return result


def _served_version(result: Any, info: ResponseInfo) -> None:
    """Embeddings in OpenAI's shape have no field for the version that served them: it
    comes in `X-Model-Version` (with a traffic split, not always the same one)."""
    if isinstance(result, Embeddings) and result.version is None:
        result.version = info.model_version


def connection_error(
    error: httpx.TransportError, rid: str, secret: str | None
) -> APIConnectionError:
    """The exception for a call that got no HTTP answer; raise it `from` its
    `__cause__`. Its text never shows the credential (`secret`, or any `Bearer ...`),
    and when the transport's own text showed it (an illegal header value is echoed), the
    transport's exception is not chained either: a traceback would print it."""
    name = type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        failure: APIConnectionError = APITimeoutError(
            f"no answer within the timeout ({name})", request_id=rid
        )
    else:
        text = redact(str(error), secret)
        failure = APIConnectionError(f"connection failed ({name}: {text})", request_id=rid)
    failure.__cause__ = None if _shows_a_secret(error, secret) else error
    return failure


def redact(text: str, secret: str | None) -> str:
    """`text` without the credential: `secret` itself and any `Bearer <token>`."""
    if secret:
        text = text.replace(secret, REDACTED)
    return _BEARER.sub(f"Bearer {REDACTED}", text)


def _shows_a_secret(error: BaseException, secret: str | None) -> bool:
    """Whether an exception or one it was raised from mentions the credential."""
    seen: set[int] = set()
    at: BaseException | None = error
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        if redact(str(at), secret) != str(at):
            return True
        at = at.__cause__ or at.__context__
    return False


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
