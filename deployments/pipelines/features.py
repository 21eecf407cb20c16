"""Online features over the store: events in (durable first, then merged into the rows
of the user and the item they name), feature values out (defaults for a missing or stale
row, and for every row while the store is down). Plain Python: no Ray, no HTTP; the
`servekit features materialize` command uses the same code to build rows in bulk.

What each feature computes is declared in `configs/features.yaml` (see
`configs/features.py`). Affinities and sums read the item's catalog attributes (an
attribute, else a text field of that name, e.g. `brand`); an item the catalog does not
hold (or an event without a catalog) moves only counts, times and recent items.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from logging import Logger
from typing import Any, Protocol

from configs.features import FeatureDefinitions, FeatureSpec, FeatureViewSpec
from stores.events import Event, EventLog
from stores.features import (
    ENTRY_SEP,
    FeatureStoreUnavailable,
    Merge,
    OnlineStore,
    Row,
    RowKey,
    apply_merge,
)

# Item attributes by item id, for one tenant's catalog.
Attributes = dict[str, dict[str, Any]]
ItemLookup = Callable[[str, str, list[str]], Awaitable[Attributes]]


class Meter(Protocol):
    """Where the service counts events and store failures (Prometheus in a replica)."""

    def events_seen(self, accepted: int, rejected: int) -> None:
        """One batch's events, accepted and rejected."""

    def store_failed(self, op: str) -> None:
        """A store call that failed or timed out."""


@dataclass
class Ingested:
    """What `FeatureService.ingest` did: events appended (`seq` the last), and whether
    the online rows took them (False while the store is down: the log has them)."""

    accepted: int
    seq: int
    features_updated: bool


@dataclass
class FeatureValues:
    """One entity's features per view, and per view whether a fresh row answered
    (False: the defaults). `degraded`: the store did not answer."""

    entity: str
    id: str
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    fresh: dict[str, bool] = field(default_factory=dict)
    degraded: bool = False


class FeatureService:
    """Reads and event ingestion for every tenant; the tenant is in every row key."""

    def __init__(
        self,
        definitions: FeatureDefinitions,
        store: OnlineStore,
        events: EventLog | None,
        items: ItemLookup | None,
        log: Logger,
        meter: Meter | None = None,
    ) -> None:
        self.definitions = definitions
        self.meter = meter
        self.store = store
        self.events = events
        self.items = items
        self.log = log
        self.store_failures = 0  # reads and writes the store did not answer
        self._store_down = False  # since the first failure, until the store answers

    async def read(self, tenant: str, entity: str, entity_id: str) -> FeatureValues:
        """Every view of `entity` for `entity_id`: one round trip to the store."""
        views = self.definitions.views_of(entity)
        keys = [RowKey(tenant, name, entity_id) for name in views]
        out = FeatureValues(entity, entity_id)
        try:
            rows: list[Row | None] = await self.store.read(keys)
        except FeatureStoreUnavailable as e:
            self._failed("read", e)
            rows, out.degraded = [None] * len(keys), True
        else:
            self._answered()
        for (name, view), row in zip(views.items(), rows, strict=True):
            out.views[name] = values(view, row)
            out.fresh[name] = row is not None
        return out

    async def read_rows(
        self, tenant: str, view_name: str, ids: Sequence[str]
    ) -> tuple[list[Row | None], bool]:
        """One view's stored rows for many entities in one round trip (None: missing or
        past the view's TTL), for readers that take a few fields of many rows; and
        whether the store did not answer (every row then None)."""
        if view_name not in self.definitions.feature_views:
            raise KeyError(f"no feature view {view_name!r}")
        try:
            rows: list[Row | None] = await self.store.read(
                [RowKey(tenant, view_name, i) for i in ids]
            )
        except FeatureStoreUnavailable as e:
            self._failed("read", e)
            return [None] * len(ids), True
        self._answered()
        return rows, False

    async def ingest(self, tenant: str, events: list[Event], catalog: str | None) -> Ingested:
        """Append `events` to the log (durable when this returns), then merge them into
        the online rows. A store outage leaves the rows behind the log; never an error."""
        seq = 0
        if self.events is not None:
            seq = await asyncio.to_thread(self.events.append, tenant, events)
        return Ingested(len(events), seq, await self.merge(tenant, events, catalog))

    async def merge(self, tenant: str, events: list[Event], catalog: str | None) -> bool:
        """Merge events the log already holds (a batch appended with its key) into the
        online rows; False when they were not merged (never an error): the store did not
        take them, or the items' attributes could not be read (the catalog store of
        sharded catalogs did not answer). Merged without them, the events would move
        counts but never the affinities and sums; left out, a repeat of a keyed batch
        merges them whole, and `servekit features rebuild` restores the rows."""
        try:
            attrs = await self._attributes(tenant, catalog, events)
        except Exception as e:  # the events are in the log already: never a 500 here
            self._attributes_failed(e)
            return False
        try:
            await self.store.merge(self.merges(tenant, events, attrs))
        except FeatureStoreUnavailable as e:
            self._failed("merge", e)
            return False
        self._answered()
        return True

    def counted(self, accepted: int, rejected: int) -> None:
        """Count one batch's events (accepted ones are in the log)."""
        if self.meter is not None:
            self.meter.events_seen(accepted, rejected)

    def merges(
        self, tenant: str, events: Sequence[Event], attrs: Attributes, history: bool = False
    ) -> list[Merge]:
        """The merges `events` make: one per (view, entity) they touch. `history`: the
        events are a whole history in time order, and each row counts only those after
        its last gap of the view's TTL or more (where the row went stale, as online it
        would have, and started again from nothing)."""
        out: list[Merge] = []
        for entity in ("user", "item"):
            groups: dict[str, list[Event]] = defaultdict(list)
            for event in events:
                groups[event.user if entity == "user" else event.item].append(event)
            for name, view in self.definitions.views_of(entity).items():
                for entity_id, group in groups.items():
                    kept = _since_last_gap(group, view.ttl_s) if history else group
                    out.append(self._merge(RowKey(tenant, name, entity_id), view, kept, attrs))
        return out

    def rows(
        self, tenant: str, events: Iterable[Event], attrs: Attributes
    ) -> list[tuple[RowKey, Row, float]]:
        """Whole rows from a history of events (materialization), as the events merged
        one after another online would have left them, a row gone stale included."""
        history = sorted(events, key=lambda e: e.at)
        return [
            (merge.key, apply_merge(None, merge), merge.ttl_s)
            for merge in self.merges(tenant, history, attrs, history=True)
        ]

    async def close(self) -> None:
        """Release the store and the log."""
        await self.store.close()
        if self.events is not None:
            await asyncio.to_thread(self.events.close)

    def _merge(
        self, key: RowKey, view: FeatureViewSpec, events: list[Event], attrs: Attributes
    ) -> Merge:
        # Of events at the same time, the later in the batch is the newer.
        order = sorted(enumerate(events), key=lambda p: (p[1].at, p[0]), reverse=True)
        newest_first = [e for _, e in order]
        merge = Merge(key, newest_first[0].at.timestamp(), view.ttl_s)
        for name, spec in view.features.items():
            matching = [
                e for e in newest_first if not spec.event_types or e.type in spec.event_types
            ]
            if matching:
                self._fold(merge, name, spec, matching, attrs)
        return merge

    def _fold(
        self, merge: Merge, name: str, spec: FeatureSpec, events: list[Event], attrs: Attributes
    ) -> None:
        if spec.kind == "count":
            merge.add[name] = float(len(events))
        elif spec.kind == "first_at":
            merge.low[name] = events[-1].at.timestamp()
        elif spec.kind == "last_at":
            merge.high[name] = events[0].at.timestamp()
        elif spec.kind == "recent_items":
            merge.push[name] = ([(e.item, e.at.timestamp()) for e in events], spec.max_items)
        elif spec.kind == "sum":
            total = sum(_number(attrs.get(e.item, {}).get(spec.attribute or "")) for e in events)
            # Finite numbers can add up to infinity (prices near 1e308): Redis refuses
            # to add it (the row's script stops half way) and SQLite keeps it as null.
            if total and math.isfinite(total):
                merge.add[name] = total
        else:  # affinity
            for event in events:
                weight = self.definitions.weight(event.type)
                for value in _strings(attrs.get(event.item, {}).get(spec.attribute or "")):
                    entry = f"{name}{ENTRY_SEP}{value}"
                    merge.add[entry] = merge.add.get(entry, 0.0) + weight

    async def _attributes(
        self, tenant: str, catalog: str | None, events: list[Event]
    ) -> Attributes:
        if catalog is None or self.items is None:
            return {}
        return await self.items(tenant, catalog, sorted({e.item for e in events}))

    def _failed(self, what: str, error: FeatureStoreUnavailable) -> None:
        """Count every failure; log the first of an outage as a warning (then one
        line when the store answers again), not one per request: while Redis is down
        every read fails, and a warning each would flood the replica's log."""
        self.store_failures += 1
        if self.meter is not None:
            self.meter.store_failed(what)
        fields = {"op": what, "error": str(error)}
        if not self._store_down:
            self._store_down = True
            self.log.warning("feature store unavailable", extra={"fields": fields})
        else:
            self.log.debug("feature store unavailable", extra={"fields": fields})

    def _answered(self) -> None:
        if self._store_down:
            self._store_down = False
            self.log.info("feature store answers again")

    def _attributes_failed(self, error: Exception) -> None:
        self.store_failures += 1
        if self.meter is not None:
            self.meter.store_failed("merge")
        # The error's first line only: a database's message may go on with its statement.
        first = (str(error).splitlines() or [""])[0][:200]
        self.log.warning(
            "feature merge skipped: the items' attributes could not be read",
            extra={"fields": {"op": "merge", "error": f"{type(error).__name__}: {first}"}},
        )


def values(view: FeatureViewSpec, row: Row | None) -> dict[str, Any]:
    """A view's feature values from its row (None: every default)."""
    if row is None:
        return {name: spec.default_value() for name, spec in view.features.items()}
    out: dict[str, Any] = {}
    for name, spec in view.features.items():
        if spec.kind == "affinity":
            out[name] = _affinity(name, spec, row)
        elif spec.kind == "recent_items":
            value = row.get(name)
            out[name] = value if isinstance(value, list) else spec.default_value()
        else:
            number = row.get(name)
            if isinstance(number, float | int) and abs(number) < sys.float_info.max:
                out[name] = _plain(number)
            else:  # missing, or a sum past the largest double (the stores hold it there)
                out[name] = spec.default_value()
    return out


def _affinity(name: str, spec: FeatureSpec, row: Row) -> dict[str, float]:
    """Shares of the weights per value (summing to 1), the `top_k` largest."""
    prefix = f"{name}{ENTRY_SEP}"
    weights = {
        field[len(prefix) :]: float(value)
        for field, value in row.items()
        if field.startswith(prefix) and isinstance(value, float | int) and value > 0
    }
    total = sum(weights.values())
    if not total:
        default: dict[str, float] = spec.default_value()
        return default
    top = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[: spec.top_k]
    return {k: round(v / total, 6) for k, v in top}


_SAFE_INTEGER = 2.0**53  # the largest whole number every JSON reader keeps exactly


def _plain(number: float) -> float | int:
    """Whole numbers as ints (counts), others to 6 decimals: Redis adds in long double
    and SQLite's rows in double, so three purchases at 89.9 read 269.7 from one and
    269.70000000000005 from the other; rounded, both backends answer alike. Whole
    numbers past 2**53 stay floats: JSON readers lose their digits anyway, and the
    answer's encoder refuses integers past 64 bits (a spend of 1e20, one purchase of an
    item priced so, made every read of the user's features a 500)."""
    rounded = round(float(number), 6)
    return int(rounded) if rounded.is_integer() and abs(rounded) <= _SAFE_INTEGER else rounded


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) else 0.0


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _since_last_gap(events: list[Event], ttl_s: float) -> list[Event]:
    """The events (in time order) after the last gap of `ttl_s` or more between two of
    them: all of them without one."""
    start = 0
    for n in range(1, len(events)):
        if (events[n].at - events[n - 1].at).total_seconds() >= ttl_s:
            start = n
    return events[start:]


def item_attributes(attributes: dict[str, Any], text: dict[str, str]) -> dict[str, Any]:
    """What features read of an item: its attributes, and its text fields where no
    attribute has the name (the example catalog's `brand` is a text field)."""
    return {**text, **attributes}
