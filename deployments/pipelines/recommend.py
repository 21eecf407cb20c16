"""Recommendations for one user of a tenant: online features in, two stages out.

1. The user's features (one round trip to the online store).
2. Candidates: the chosen recommender version's user tower over those features and the
   vectors of the user's recent items, searched in that version's index of the catalog
   (the item tower's vectors, kept like a search model's: backfilled, followed, dropped
   with the version), within the filters.
3. Ranking: the version's ranker over each candidate's features (the towers' score, the
   item's popularity and recency from its online row, the user's affinities, price).

An item in `context` steers the candidates (the user vector plus its vector); for a user
without history, or any user while the feature store does not answer (flagged
`degraded`), the answer is the items most like it. Without such an item, they get the
tenant's popular items within the filters: the event log's most engaged items
of the window, re-read every few seconds, topped up from the catalog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from logging import Logger
from typing import Any, Protocol

import numpy as np

from configs.schema import RecommendationSettings
from deployments.pipelines.catalog_index import CatalogIndex, Hit
from deployments.pipelines.features import FeatureService
from deployments.pipelines.search import SearchService
from models.recommender import ItemStats, Profile, Recommender, rank_features
from models.two_tower import EVENT_WEIGHTS
from stores.catalog import Item
from stores.events import EventLog
from stores.features import Row

# Popular items kept per tenant and catalog, before filters: a cold user's filters (a
# category) pick from these in order, and only past them from the catalog's order. At
# 1,000, a category whose items ranked past the thousandth came in catalog order,
# engaged items and never-seen ones alike.
POPULAR_LIMIT = 10_000
STALE_WAIT_S = 0.05  # how long a request waits for a re-read before the stale list
ITEM_VIEW = "item_popularity"
# The view's counts and what one event of each kind weighs (the feature definitions').
_COUNT_WEIGHTS = (("views", EVENT_WEIGHTS["view"]), ("clicks", EVENT_WEIGHTS["click"]),
                  ("add_to_carts", EVENT_WEIGHTS["add_to_cart"]),
                  ("purchases", EVENT_WEIGHTS["purchase"]))  # fmt: skip
USER_VIEW = "user_activity"


@dataclass(frozen=True)
class RecommendQuery:
    """One request: whose user, which catalog, the version chosen for it."""

    tenant: str
    catalog: str
    user: str
    version: str  # of the recommender model
    k: int
    filters: dict[str, Any] | None
    exclude_seen: bool
    context_item: str | None = None  # the item being looked at: steers the candidates


@dataclass
class Recommendations:
    """What a request answers: ranked hits, where they came from, and how."""

    hits: list[Hit]
    source: str  # "model": the two stages; "popular": cold start or degraded
    degraded: bool  # the feature store did not answer
    candidates: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    process: str = "ingress"  # which answered: "worker" (`recommend_process.py`) or here


class RecommendMeter(Protocol):
    """Where the service counts answers (Prometheus in a replica)."""

    def served(
        self, version: str, source: str, degraded: bool, seconds: float, process: str = "ingress"
    ) -> None:
        """One answer: the version, its source (model, popular), whether degraded, which
        process answered (worker, ingress)."""


class Worker(Protocol):
    """A process that answers recommendations for this one (`recommend_process.py`)."""

    async def recommend(self, q: RecommendQuery) -> Recommendations | None:
        """Its answer, or None: answer here."""

    async def close(self) -> None:
        """Stop it."""


class CatalogMissing(LookupError):
    """The tenant has no catalog of that name on this replica."""


class PopularItems:
    """Each tenant's most engaged items of the window, from the shared event log: every
    replica reads the same answer, re-read at most every `refresh_s`."""

    def __init__(self, events: EventLog | None, settings: RecommendationSettings,
                 log: Logger, weights: Mapping[str, float] = EVENT_WEIGHTS) -> None:  # fmt: skip
        """`weights`: what each event type weighs (the feature definitions'
        `event_weights`)."""
        self.events = events
        self.settings = settings
        self.log = log
        self.weights = dict(weights)
        self._lists: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self._refreshing: dict[tuple[str, str], asyncio.Task[list[str]]] = {}

    async def of(self, tenant: str, catalog: str) -> list[str]:
        """The popular item ids of the tenant's catalog (its events, and those that
        named no catalog), most first: re-read when older than `popular_refresh_s` (the
        stale list answers when the read is slow; the first call waits for it)."""
        now = time.monotonic()
        key = (tenant, catalog)
        cached = self._lists.get(key)
        if cached is not None and now - cached[0] < self.settings.popular_refresh_s:
            return cached[1]
        task = self._refreshing.get(key)
        if task is None or task.done():
            task = self._refreshing[key] = asyncio.create_task(self._read(tenant, catalog))
        if cached is None:
            return await asyncio.shield(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), STALE_WAIT_S)
        except TimeoutError:
            return cached[1]

    async def _read(self, tenant: str, catalog: str) -> list[str]:
        if self.events is None:
            return []
        since = datetime.fromtimestamp(time.time() - self.settings.popular_window_s, UTC)
        try:
            rows = await asyncio.to_thread(
                self.events.popular, tenant, since, self.weights, POPULAR_LIMIT, catalog
            )
        except Exception as e:  # the log is down: keep what we had
            self.log.warning(
                "popular items not read", extra={"fields": {"error": type(e).__name__}}
            )
            return self._lists.get((tenant, catalog), (0.0, []))[1]
        ids = [item for item, _ in rows]
        self._lists[(tenant, catalog)] = (time.monotonic(), ids)
        return ids


class RecommendService:
    """Recommendations over the catalogs the search service keeps."""

    def __init__(
        self,
        model: str,
        versions: dict[str, Recommender],
        search: SearchService,
        features: FeatureService,
        popular: PopularItems,
        settings: RecommendationSettings,
        meter: RecommendMeter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meter = meter
        self.model = model
        self.versions = versions
        self.search = search
        self.features = features
        self.popular = popular
        self.settings = settings
        self.clock = clock
        # Where recommendations run when it answers (`recommend_process.py`); None: here.
        self.worker: Worker | None = None
        # Each loaded version's `servekit_replicas` (set by the Ingress, which has them).
        self.replica_metrics: list[Any] = []

    def served(self, version: str, got: Recommendations) -> None:
        """Count one answer."""
        if self.meter is not None:
            seconds = sum(got.timings_ms.values()) / 1000
            self.meter.served(version, got.source, got.degraded, seconds, got.process)

    def space(self, version: str) -> str:
        """The catalog index space of a version's item vectors."""
        return f"{self.model}/{version}"

    def item_vectors(self, space: str, items: list[Item]) -> np.ndarray[Any, Any]:
        """Item-tower vectors of `items` by the version of `space` (for the indexes)."""
        return self.versions[space.split("/", 1)[1]].item_vectors(items)

    async def recommend(self, q: RecommendQuery) -> Recommendations:
        """The k best items for the user (see the module's description): from the
        recommendation worker when there is one and it answers, else here."""
        index = self.search.catalogs.get((q.tenant, q.catalog))
        if index is None:
            raise CatalogMissing(q.catalog)
        if self.worker is not None:
            got = await self.worker.recommend(q)
            if got is not None:
                return got
        return await self.recommend_here(q, index)

    async def recommend_here(self, q: RecommendQuery, index: CatalogIndex) -> Recommendations:
        """The two stages on this process's event loop."""
        started = time.perf_counter()
        got = await self.features.read(q.tenant, "user", q.user)
        profile = Profile.from_features(got.views)
        seen = profile.seen(got.views) if q.exclude_seen else set()
        recommender = self.versions[q.version]
        space = self.space(q.version)
        context = np.zeros((0, 0), np.float32)
        if q.context_item is not None:
            context = index.vectors_of(space, [q.context_item])
            seen.add(q.context_item)
        timings = {"features": _ms(started)}
        like_this = profile.cold and len(context) > 0
        if not like_this and (got.degraded or profile.cold):
            hits = await self._popular(q, index, seen, set())
            return Recommendations(hits, "popular", got.degraded, 0, timings)
        step = time.perf_counter()
        if like_this:  # nothing known of the user: items like the one in view
            vector = context[0]
        else:
            vector = recommender.user_vector(profile, index.vectors_of(space, profile.recent))
            if len(context):  # the user's taste, steered towards the item in view
                vector = vector + context[0]
                vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        wanted = max(self.settings.candidates, q.k) + len(seen)
        # On the event loop, as a search's is: handing it to a thread and back cost more
        # than the search (measured at 16 connections +10 %, at one +14 %).
        found = index.search(space, vector, "", wanted, q.filters, False)
        found = [h for h in found if h.item.id not in seen]
        timings["candidates"] = _ms(step)
        step = time.perf_counter()
        degraded = got.degraded
        if like_this:
            hits = found[: q.k]
        else:
            hits, unread = await self._rank(q.tenant, recommender, index, profile, found, q.k)
            degraded = degraded or unread  # ranked without the items' popularity
        timings["rank"] = _ms(step)
        if len(hits) < q.k:  # a small catalog, or filters few items pass
            taken = {h.item.id for h in hits}
            hits += _below(hits, await self._popular(q, index, seen, taken))
        return Recommendations(hits[: q.k], "model", degraded, len(found), timings)

    async def _rank(
        self,
        tenant: str,
        recommender: Recommender,
        index: CatalogIndex,
        profile: Profile,
        found: list[Hit],
        k: int,
    ) -> tuple[list[Hit], bool]:
        """The best `k` of the candidates by the ranker; and whether the store did not
        answer for the candidates' rows (ranked without their popularity and recency)."""
        if not found:
            return [], False
        ids = [h.item.id for h in found]
        rows, unread = await self.features.read_rows(tenant, ITEM_VIEW, ids)
        stats = [_item_stats(row) for row in rows]
        recent = index.matching(profile.recent, None, len(profile.recent))
        prices = [item.attributes.get("price") for item in recent]
        features = rank_features(
            [h.score for h in found], [h.item for h in found], stats, profile, prices,
            self.clock(),
        )  # fmt: skip
        scores = recommender.ranker.score(features)
        order = np.argsort(-scores, kind="stable")
        return [Hit(found[n].item, float(scores[n])) for n in order[:k]], unread

    async def _popular(
        self, q: RecommendQuery, index: CatalogIndex, seen: set[str], taken: set[str]
    ) -> list[Hit]:
        """Popular items within the filters (then the catalog's), not seen nor taken."""
        skip = seen | taken
        want = q.k - len(taken)
        ids = [i for i in await self.popular.of(q.tenant, q.catalog) if i not in skip]
        items = index.matching(ids, q.filters, want)
        if len(items) < want:
            have = skip | {i.id for i in items}
            extra = index.matching(None, q.filters, want + len(have))
            items += [i for i in extra if i.id not in have][: want - len(items)]
        n = len(items)
        return [Hit(item, round(1.0 - r / max(1, n), 6)) for r, item in enumerate(items)]


def _below(ranked: list[Hit], extra: list[Hit]) -> list[Hit]:
    """`extra` (in its order) scored below the last of `ranked`: items that top an answer
    up come after the ranked ones, and the scores still read best first (a popular
    item's own score, 1 down to 0, would stand above every ranker's probability)."""
    if not ranked or not extra:
        return extra
    floor, n = ranked[-1].score, len(extra)
    if floor > 0:  # probabilities, similarities: keep within (0, floor)
        return [Hit(h.item, floor * (n - r) / (n + 1)) for r, h in enumerate(extra)]
    return [Hit(h.item, floor - (r + 1) / (n + 1)) for r, h in enumerate(extra)]


def _item_stats(row: Row | None) -> ItemStats:
    """What the ranker reads of an item's `item_popularity` row (None: no events)."""
    if row is None:
        return ItemStats()
    weighted = 0.0
    for name, weight in _COUNT_WEIGHTS:
        value = row.get(name)
        if isinstance(value, (int, float)):
            weighted += float(value) * weight
    last = row.get("last_event_at")
    return ItemStats(weighted, float(last) if isinstance(last, (int, float)) else 0.0)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
