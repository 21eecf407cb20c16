"""When a failed call is tried again, and after how long: plain functions, no I/O.

A call is retried on 429 and 503 and when the service could not be reached. The service
answers 429 and 503 before doing anything (over a limit, queues full, a store that did
not take the write: nothing kept), so those are safe to repeat for every route; but a
503 from a proxy in between (no servekit error envelope) may come after the proxy passed
the request on, so for routes that are not idempotent only servekit's own 503 is
repeated. A connection that broke or timed out after the request was sent may have done
the work: that is retried only for idempotent routes (reads, PUT, DELETE, PATCH, and
event batches, which the service stores once per key: see `_routes.py`).

A proxy's 503 is one such attempt too: the request may have been acted on. So a delete
repeated after one, or after a lost answer, that finds the item gone counts as done; but
only on servekit's own 404 naming the missing resource (`item: no such item in this
catalog`), never on a proxy's page or servekit's `no such route`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})
# servekit's messages name the field first (`item: no such item in this catalog`); a
# route it does not have names none (`no such route`).
_NAMES_A_FIELD = re.compile(r"([A-Za-z_][\w.-]*): ")
# Raised before a byte of the request reached the service: always safe to repeat.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The request may have reached the service: repeat only what is idempotent.
MAYBE_SENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded; `Retry-After` wins when it is given.

    The n-th retry (n from 0) waits between half and all of
    `min(max_delay_s, initial_delay_s * 2**n)`. A `Retry-After` up to
    `max_retry_after_s` is waited in full (plus up to 10% jitter); a longer one (a
    monthly quota, say) is not waited for: the error is raised at once, carrying it.
    """

    max_retries: int = 2
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries: must be 0 or more")
        if not 0 <= self.initial_delay_s <= self.max_delay_s:
            raise ValueError("initial_delay_s: must be between 0 and max_delay_s")
        if self.max_retry_after_s < 0:
            raise ValueError("max_retry_after_s: must be 0 or more")

    def backoff_s(self, retry: int) -> float:
        """The jittered wait before retry number `retry` (0-based)."""
        ceiling = min(self.max_delay_s, self.initial_delay_s * 2.0**retry)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def delay_s(self, retry: int, retry_after: float | None) -> float | None:
        """How long to wait before retry number `retry`; None: do not retry."""
        if retry >= self.max_retries:
            return None
        if retry_after is None:
            return self.backoff_s(retry)
        if retry_after > self.max_retry_after_s:
            return None
        return retry_after + self.rng.uniform(0, retry_after / 10)


def retry_answer(response: httpx.Response, idempotent: bool) -> bool:
    """Whether an error answer may be tried again: 429 always, 503 on idempotent routes,
    and on the others only when servekit itself answered it (its error envelope)."""
    status = response.status_code
    if status not in RETRY_STATUSES:
        return False
    return status == 429 or idempotent or _from_the_service(response)


def maybe_acted(response: httpx.Response) -> bool:
    """Whether the request of an error answer may have been acted on all the same: a 503
    that is not servekit's (a proxy may answer it after passing the request on)."""
    return response.status_code == 503 and not _from_the_service(response)


def resource_missing(response: httpx.Response) -> bool:
    """Whether an answer is servekit's own 404 `not_found` naming the missing resource:
    not a proxy's page, nor servekit's `no such route`, which say nothing of the item."""
    if response.status_code != 404:
        return False
    detail = _envelope(response)
    message = detail.get("message") if detail is not None else None
    return (
        detail is not None
        and detail.get("code") == "not_found"
        and isinstance(message, str)
        and field_named(message) is not None
    )


def field_named(message: str) -> str | None:
    """The field, parameter or header a servekit message names first
    (`items.0.attributes.price: ...`, `header.x-routing-key: ...`); None when it names
    none (`no such route`)."""
    named = _NAMES_A_FIELD.match(message)
    return named.group(1) if named is not None else None


def _from_the_service(response: httpx.Response) -> bool:
    return _envelope(response) is not None


def _envelope(response: httpx.Response) -> dict[str, object] | None:
    """servekit's `{"error": {"code": ..., ...}}`, or None for any other body."""
    try:
        body = response.json()
    except ValueError:
        return None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("code"), str):
        return detail
    return None


def retry_exception(error: Exception, idempotent: bool) -> bool:
    """Whether a call that raised `error` may be tried again."""
    if isinstance(error, NOT_SENT):
        return True
    return idempotent and isinstance(error, MAYBE_SENT)


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
