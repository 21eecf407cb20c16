"""Deprecating a route or a field, declared where it is defined.

    @deprecated(on="2027-01-15", sunset="2027-07-15", link="https://docs.example.com/v1-old")
    @router.get("/v1/old", ...)
    async def old(...): ...

    legacy: str | None = Field(None, json_schema_extra=deprecated_field(on="2027-01-15"))

A deprecated route keeps answering, with `Deprecation: @<unix seconds>` (RFC 9745),
`Sunset: <HTTP-date>` (RFC 8594) and `Link` rel="deprecation" / rel="sunset" on every
response, errors included; the OpenAPI document marks it (and a deprecated field)
`deprecated: true` with `x-deprecation: {on, sunset, link}`, which `servekit api check`
reads: removing it before its sunset is breaking unless `api/changes.yaml` declares it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.http.envelope import API_VERSION, API_VERSION_HEADER

ATTRIBUTE = "__servekit_deprecation__"
HEADER_DOCS: dict[str, dict[str, Any]] = {
    "Deprecation": {
        "description": "When the route was (or will be) deprecated: `@<unix seconds>` (RFC 9745).",
        "schema": {"type": "string", "pattern": "^@-?[0-9]+$"},
    },
    "Sunset": {
        "description": "When the route may stop answering, as an HTTP-date (RFC 8594).",
        "schema": {"type": "string"},
    },
    "Link": {
        "description": 'rel="deprecation": what to use instead; rel="sunset": the policy.',
        "schema": {"type": "string"},
    },
}
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Deprecation:
    """When a route or field was (or will be) deprecated, when it may go, and where
    callers read what to use instead."""

    on: date
    sunset: date | None = None
    link: str | None = None
    sunset_link: str | None = None

    def __post_init__(self) -> None:
        if self.sunset is not None and self.sunset <= self.on:
            raise ValueError(f"deprecation: sunset {self.sunset} is not after {self.on}")
        for link in (self.link, self.sunset_link):
            if link is not None and not link.startswith(("https://", "http://", "/")):
                raise ValueError(f"deprecation: link {link!r} is not a URL or an absolute path")

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers a deprecated route answers with."""
        out = [(b"deprecation", f"@{_seconds(self.on)}".encode())]
        if self.sunset is not None:
            out.append((b"sunset", _http_date(self.sunset).encode()))
        links = [f'<{self.link}>; rel="deprecation"'] if self.link else []
        if self.sunset_link:
            links.append(f'<{self.sunset_link}>; rel="sunset"')
        if links:
            out.append((b"link", ", ".join(links).encode()))
        return out

    def document(self) -> dict[str, Any]:
        """`x-deprecation` in the OpenAPI document."""
        doc: dict[str, Any] = {"on": self.on.isoformat()}
        if self.sunset is not None:
            doc["sunset"] = self.sunset.isoformat()
        if self.link:
            doc["link"] = self.link
        return doc


def _day(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _seconds(day: date) -> int:
    return int(_midnight(day).timestamp())


def _http_date(day: date) -> str:
    return format_datetime(_midnight(day), usegmt=True)


def declare(
    on: date | str,
    sunset: date | str | None = None,
    link: str | None = None,
    sunset_link: str | None = None,
) -> Deprecation:
    """A deprecation from days given as dates or ISO strings (midnight UTC)."""
    return Deprecation(_day(on), _day(sunset) if sunset else None, link, sunset_link)


def deprecated(
    on: date | str,
    sunset: date | str | None = None,
    link: str | None = None,
    sunset_link: str | None = None,
) -> Callable[[F], F]:
    """Mark a route's endpoint deprecated (above or below its `@router.<method>`)."""
    deprecation = declare(on, sunset, link, sunset_link)

    def mark(endpoint: F) -> F:
        setattr(endpoint, ATTRIBUTE, deprecation)
        return endpoint

    return mark


def deprecated_field(
    on: date | str, sunset: date | str | None = None, link: str | None = None
) -> dict[str, Any]:
    """`json_schema_extra` of a deprecated model field (it stays accepted and answered)."""
    return {"deprecated": True, "x-deprecation": declare(on, sunset, link).document()}


def of_route(route: BaseRoute) -> Deprecation | None:
    """The deprecation declared on a route's endpoint, if any."""
    found: Deprecation | None = getattr(getattr(route, "endpoint", None), ATTRIBUTE, None)
    return found


def document(schema: dict[str, Any], routes: Iterable[BaseRoute]) -> None:
    """Mark the deprecated routes' operations in an OpenAPI document, with the headers
    their responses carry."""
    for route in routes:
        deprecation = of_route(route)
        if deprecation is None:
            continue
        operations = schema["paths"][getattr(route, "path_format", "")]
        for method in getattr(route, "methods", ()) or ():
            operation = operations.get(method.lower())
            if operation is None:
                continue
            operation["deprecated"] = True
            operation["x-deprecation"] = deprecation.document()
            for response in operation.get("responses", {}).values():
                headers = response.setdefault("headers", {})
                for name, _ in deprecation.headers():
                    header = name.decode().title()
                    headers[header] = HEADER_DOCS[header]


class ContractHeaders:
    """ASGI wrapper, outermost: every response says the API version, and a deprecated
    route's responses (the auth gate's refusals too) say so and when it goes."""

    def __init__(self, app: ASGIApp, routes: Callable[[], Iterable[BaseRoute]]) -> None:
        self.app = app
        self._routes = routes
        self._deprecated: list[BaseRoute] | None = None  # found on the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"api-version" for name, _ in headers):
                    headers.append((API_VERSION_HEADER.lower().encode(), API_VERSION.encode()))
                deprecation = self._deprecation(scope)
                if deprecation is not None:
                    headers += deprecation.headers()
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _deprecation(self, scope: Scope) -> Deprecation | None:
        """The answering route's deprecation; a request refused before routing (401,
        403) is matched against the deprecated routes here."""
        if self._deprecated is None:
            self._deprecated = [r for r in self._routes() if of_route(r) is not None]
        if not self._deprecated:
            return None
        route = scope.get("route")
        if route is not None:
            return of_route(route)
        for candidate in self._deprecated:
            if candidate.matches(scope)[0] == Match.FULL:
                return of_route(candidate)
        return None
