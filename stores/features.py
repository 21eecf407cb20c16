"""The online feature store: one row of stored values per (tenant, feature view, entity),
changed by atomic merges (what events do) or replaced whole (what materialization does).

A row maps field names to numbers or to lists of strings. Map-valued features (an
affinity per category) are kept as one numeric field per entry, `<feature>:<key>`
(feature names never hold a ':'), so that an event adds to one entry without reading
the rest. `AT_FIELD` holds the time of the newest event the row counts: the row is fresh
until `AT_FIELD + ttl_s` and then reads as missing (and a merge starts it afresh), on
both backends alike. A list field (recent items) is ordered by its items' event times,
which `times_field(name)` holds beside it, in the list's order, as decimal texts (exact
on both backends); a row written before the times were kept reads as it was, and its
items count as of the row's `AT_FIELD` when the next merge orders them.

Backends: `SqliteFeatureStore` (`stores/features_sqlite.py`, one file shared by the
processes of one machine: what `make serve` runs) and `RedisFeatureStore`
(`stores/features_redis.py`, production: a hash per row, one round trip per read and
per batch of merges). The tenant is part of every key.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

Value = float | list[str]
Row = dict[str, Value]
AT_FIELD = "_at"  # the newest event's time (Unix seconds) the row counts
ENTRY_SEP = ":"  # `<feature>:<key>` for one entry of a map-valued feature


class RowKey(NamedTuple):
    """Whose row: the tenant, the feature view and the entity's id."""

    tenant: str
    view: str
    entity: str


@dataclass
class Merge:
    """What one batch of events does to one row, applied atomically.

    `add`: numbers added to fields (missing fields count from 0); `high` / `low`: a
    field set to the value when above / below what it holds (or missing); `push`: items
    with their events' times put in a list field (`(items, max_len)`), which keeps each
    item once at its newest time, newest first, cut to `max_len` (see `pushed`): a late
    event takes its place by its time, never the front. `at`: the newest event's time,
    which the row's `AT_FIELD` takes when later.
    """

    key: RowKey
    at: float
    ttl_s: float
    add: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)
    low: dict[str, float] = field(default_factory=dict)
    push: dict[str, tuple[list[tuple[str, float]], int]] = field(default_factory=dict)


class FeatureStoreUnavailable(Exception):
    """The online store did not answer (down, unreachable, too slow); never carries a
    password. Readers answer defaults; writers report features not updated."""


class OnlineStore(Protocol):
    """Rows of feature values, fresh for their view's TTL after their newest event."""

    async def read(self, keys: Sequence[RowKey]) -> list[Row | None]:
        """Each key's row, in order; None where there is none or it is stale. One round
        trip for all of them."""
        ...

    async def merge(self, merges: Sequence[Merge]) -> None:
        """Apply merges, each atomically on its row (a stale row starts empty)."""
        ...

    async def replace(self, rows: Sequence[tuple[RowKey, Row, float]]) -> None:
        """Replace whole rows (`(key, row, ttl_s)`; the row carries `AT_FIELD`)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def check_key(key: RowKey) -> None:
    """Refuse parts that would make keys ambiguous or unbounded."""
    if not 0 < len(key.tenant) <= 64 or not 0 < len(key.view) <= 64:
        raise ValueError("tenant and view have 1 to 64 characters")
    if not 0 < len(key.entity) <= 256:
        raise ValueError("an entity id has 1 to 256 characters")


def apply_merge(row: Row | None, merge: Merge) -> Row:
    """`row` after `merge` (the reference semantics; Redis runs the same in Lua)."""
    out: Row = dict(row or {})
    for name, delta in merge.add.items():
        out[name] = _finite(_number(out.get(name)) + delta)
    for name, value in merge.high.items():
        current = out.get(name)
        if current is None or value > _number(current):
            out[name] = value
    for name, value in merge.low.items():
        current = out.get(name)
        if current is None or value < _number(current):
            out[name] = value
    for name, (items, max_len) in merge.push.items():
        kept = pushed(_timed(out, name), [(item, repr(float(at))) for item, at in items], max_len)
        out[name] = [item for item, _ in kept]
        out[times_field(name)] = [at for _, at in kept]
    current_at = out.get(AT_FIELD)
    if current_at is None or merge.at > _number(current_at):
        out[AT_FIELD] = merge.at
    return out


def times_field(name: str) -> str:
    """The field holding the event times of list field `name`'s items, in its order (a
    reserved name: feature names start with a letter)."""
    return f"{AT_FIELD}{ENTRY_SEP}{name}"


def pushed(
    old: list[tuple[str, str]], new: list[tuple[str, str]], max_len: int
) -> list[tuple[str, str]]:
    """`(item, time)` pairs of `new` and `old`, each item once at its newest time, newest
    first, at most `max_len`. Of equal times, `new` comes before `old` (a later merge is
    the newer), each in its own order. Times are decimal texts, compared as numbers."""
    best: dict[str, tuple[float, int, str]] = {}
    for n, (item, at) in enumerate([*new, *old]):
        if item not in best or float(at) > best[item][0]:
            best[item] = (float(at), n, at)
    order = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
    return [(item, at) for item, (_, _, at) in order[:max_len]]


def _timed(row: Row, name: str) -> list[tuple[str, str]]:
    """List field `name`'s items with their times; items stored without one (rows from
    before the times were kept) count as of the row's newest event."""
    items, times = row.get(name), row.get(times_field(name))
    if not isinstance(items, list):
        return []
    times = times if isinstance(times, list) else []
    fallback = repr(_number(row.get(AT_FIELD)))
    return [(item, times[n] if n < len(times) else fallback) for n, item in enumerate(items)]


def _number(value: Value | None) -> float:
    """A stored value as a number: what is not one (a field whose definition changed
    from a list, a value lost to an earlier overflow) counts 0."""
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else 0.0


def _finite(total: float) -> float:
    """A sum held within the largest double: one past it stays there, as it does in
    Redis (an infinity stored as JSON would read back as nothing)."""
    return min(max(total, -sys.float_info.max), sys.float_info.max)
