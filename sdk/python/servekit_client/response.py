"""What an answer's headers said, beside its body: the request id the service logged the
call under, the model version that served it and the caller's rate limit.

Every result a client method returns has it as `.response` (a list answer is a
`ResponseList`, a `list` with `.response`); an `APIStatusError` has the same fields
itself (`request_id`, `headers`, `rate_limit`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

import httpx

__all__ = ["RateLimit", "ResponseInfo", "ResponseList"]

REQUEST_ID_HEADER = "X-Request-ID"
MODEL_VERSION_HEADER = "X-Model-Version"
T = TypeVar("T")
# One member of a structured-field list (RFC 8941): a name (a string or a token), then
# `;key=value` parameters; the service's are integers (`"requests";r=4;t=1`).
_MEMBER_NAME = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([A-Za-z*][\w:./*-]*))')
_PARAM = re.compile(r"\s*;\s*([a-z*][a-z0-9_.*-]*)(?:=(-?\d+))?")


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """The tightest of the caller's limits, from the answer's `RateLimit` and
    `RateLimit-Policy` headers (draft-ietf-httpapi-ratelimit-headers): `policy` names
    it (`requests`, `texts` or `monthly`). Each number is None when the
    answer did not give it."""

    policy: str
    remaining: int | None
    """Requests (or texts) still allowed now (`r`)."""
    reset_s: int | None
    """Seconds until the limit is whole again (`t`)."""
    limit: int | None
    """The most the policy allows per window (`q` of `RateLimit-Policy`)."""
    window_s: int | None
    """The window `limit` counts over, in seconds (`w` of `RateLimit-Policy`)."""

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> RateLimit | None:
        """The limit the headers describe; None without a readable `RateLimit`."""
        state = _first_member(headers.get("ratelimit"))
        if state is None:
            return None
        name, now = state
        policies = _members(headers.get("ratelimit-policy"))
        policy = policies.get(name, {})
        return cls(name, now.get("r"), now.get("t"), policy.get("q"), policy.get("w"))


@dataclasses.dataclass(frozen=True)
class ResponseInfo:
    """One answer's status and headers, and what servekit says in them."""

    status: int
    request_id: str
    """The id the service logged the call under (`X-Request-ID`; else the one sent)."""
    model_version: str | None
    """The model version that served the call (`X-Model-Version`), when a model ran."""
    rate_limit: RateLimit | None
    """The caller's tightest limit after this call, when the service said it."""
    headers: httpx.Headers = dataclasses.field(repr=False, compare=False)

    @classmethod
    def of(cls, response: httpx.Response, sent_request_id: str) -> ResponseInfo:
        """What `response`, answering a call sent as `sent_request_id`, said."""
        headers = response.headers
        return cls(
            status=response.status_code,
            request_id=headers.get(REQUEST_ID_HEADER) or sent_request_id,
            model_version=headers.get(MODEL_VERSION_HEADER) or None,
            rate_limit=RateLimit.from_headers(headers),
            headers=headers,
        )


class ResponseList(list[T]):
    """A list answer (`list_tenants`, `list_keys`): a plain list, with `.response`."""

    response: ResponseInfo | None

    def __init__(self, items: Any = (), response: ResponseInfo | None = None) -> None:
        super().__init__(items)
        self.response = response


def _first_member(value: str | None) -> tuple[str, dict[str, int]] | None:
    members = _parse(value)
    return members[0] if members else None


def _members(value: str | None) -> dict[str, dict[str, int]]:
    return dict(_parse(value))


def _parse(value: str | None) -> list[tuple[str, dict[str, int]]]:
    """The members of a structured-field list with their integer parameters; what is
    not readable ends the list (a header another hop mangled is not an error)."""
    out: list[tuple[str, dict[str, int]]] = []
    at = 0
    text = value or ""
    while at < len(text):
        name = _MEMBER_NAME.match(text, at)
        if name is None:
            break
        params: dict[str, int] = {}
        at = name.end()
        while (param := _PARAM.match(text, at)) is not None:
            if param.group(2) is not None:
                params[param.group(1)] = int(param.group(2))
            at = param.end()
        out.append((name.group(1) if name.group(1) is not None else name.group(2), params))
        rest = text[at:].lstrip()
        if not rest.startswith(","):
            break
        at = len(text) - len(rest) + 1
    return out
