"""What the client's methods take: plain dicts, typed for editors and type checkers."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypedDict

from typing_extensions import NotRequired

from servekit_client.models import AttrValue

__all__ = ["EventInput", "EventType", "ItemInput", "LimitsInput", "Scope"]

EventType = Literal["view", "click", "add_to_cart", "purchase"]
Scope = Literal["embed", "search", "catalog", "recommend", "events", "usage", "admin"]


class ItemInput(TypedDict):
    """A catalog item: text fields (embedded, matched by BM25) and attributes (filters)."""

    id: str
    text: dict[str, str]
    attributes: NotRequired[dict[str, AttrValue]]


class EventInput(TypedDict):
    """One interaction; `timestamp` (a datetime with a time zone, RFC 3339 text or Unix
    seconds) defaults to when the service receives it. A datetime without a time zone
    is refused before sending (`InvalidArgumentError`)."""

    user: str
    item: str
    type: EventType
    timestamp: NotRequired[datetime | str | float]


class LimitsInput(TypedDict, total=False):
    """Rate limits and monthly quota; a field left out falls back (key -> tenant)."""

    requests_per_s: float
    texts_per_s: float
    monthly_texts: int
