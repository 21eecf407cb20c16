"""Every Prometheus metric servekit defines, in one place.

They are exported through Ray's metrics agent, so one scrape of a node's metrics
port covers every replica on it; Ray prefixes each name with `ray_` (so
`servekit_requests_total` is scraped as `ray_servekit_requests_total`) and adds the
`application`, `deployment` and `replica` tags. Labels are model, version, route and
status code: never anything taken from request content.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

from deployments.tenancy.principal import POOLED_TENANT

LATENCY_BUCKETS_S = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
]  # fmt: skip
COUNT_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0]

# name -> (kind, description): the catalogue the README and the dashboards use.
CATALOGUE = {
    "servekit_requests_total": ("counter", "Requests answered by the ingress, by status code."),
    "servekit_request_duration_seconds": ("histogram", "Ingress latency per request."),
    "servekit_inputs_per_request": ("histogram", "Inputs (texts) per request."),
    "servekit_batch_size": ("histogram", "Inputs per model call after batching."),
    "servekit_dropped_requests_total": (
        "counter",
        "Requests a version refused or dropped before running them, by reason "
        "(queue_full, expired, cancelled).",
    ),
    "servekit_tenant_requests_total": (
        "counter",
        "Requests per tenant and status code; tenants outside `auth.metrics_tenants` "
        "count as `other`, so the series stay bounded.",
    ),
    "servekit_search_index_pending_items": (
        "gauge",
        "Catalog items (all tenants) still without a vector in a version's index, as "
        "the answering replica sees them: 0 when every index of the version is complete.",
    ),
    "servekit_search_shard_rounds_total": (
        "counter",
        "Fan-out rounds of searches over catalog shards, by round: stats (each shard's "
        "part of a hybrid query's BM25 statistics asked for: a term not searched before, "
        "or no statistics kept), candidates (each shard's best items asked for), stale "
        "(of those, rounds a shard answered with its new statistics instead: written to "
        "since they were kept; the search then takes one round more).",
    ),
    "servekit_inference_duration_seconds": ("histogram", "Model time per batch."),
    "servekit_replicas": ("gauge", "1 per live model replica; sum by model and version."),
    "servekit_traffic_weight": ("gauge", "Effective traffic weight per version, in percent."),
    "servekit_rollbacks_total": ("counter", "Automatic canary rollbacks."),
    "servekit_shadow_requests_total": ("counter", "Shadow copies by outcome (ok/error/dropped)."),
    "servekit_shadow_duration_seconds": ("histogram", "Latency of shadow calls."),
    "servekit_shadow_cosine": (
        "histogram",
        "Agreement of a shadow copy with the primary, per input: the cosine of the two "
        "vectors; for a recommender, the share of the primary's items the shadow answered.",
    ),
    "servekit_embedding_cache_lookups_total": (
        "counter",
        "Texts looked up in the embedding cache, by tier (memory, redis), use (search, "
        "embeddings) and result (hit, miss). Every text is looked up in memory; a memory "
        "miss then in Redis when Redis is configured; a Redis miss (or a Redis that did "
        "not answer in time) is embedded by the model.",
    ),
    "servekit_embedding_cache_memory_bytes": (
        "gauge",
        "Bytes the memory tier of the embedding cache holds (vectors and key overhead).",
    ),
    "servekit_embedding_cache_redis_errors_total": (
        "counter",
        "Embedding cache calls to Redis that failed or timed out, by operation (get, put, "
        "retain); each counts as a miss, never as a failed request.",
    ),
    "servekit_recommendations_total": (
        "counter",
        "Answers of /v1/recommendations by recommender version, source (model: the two "
        "stages; popular: a user without history, or the feature store down), degraded "
        "(true: the feature store did not answer) and process (worker: the replica's "
        "recommendation worker; ingress: the replica's own event loop).",
    ),
    "servekit_events_total": (
        "counter",
        "Events of POST /v1/events, by outcome: accepted (appended to the log) or rejected "
        "(named in the answer).",
    ),
    "servekit_feature_store_errors_total": (
        "counter",
        "Online feature store calls that failed or timed out, by operation (read: the "
        "request answered defaults, flagged degraded; merge: events logged, rows behind).",
    ),
}
COSINE_BUCKETS = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0]


class RecordBuffer:
    """Metric points gathered in memory and handed to Ray by a background thread.

    Ray's record call gives up the GIL and has to win it back; on a busy replica that
    costs 30-40 µs a call instead of 2 µs (py-spy, 1-text requests at 16 connections),
    and the event loop paid it three times per request. Here the request path only
    adds to a dict or a list; counters are summed, histogram values recorded one by
    one when flushed (every `interval_s`, so a scrape lags by at most that much more).
    """

    def __init__(self, interval_s: float = 0.5, max_pending: int = 50_000) -> None:
        self._interval_s = interval_s
        self._max_pending = max_pending
        self._counts: dict[tuple[Any, tuple[tuple[str, str], ...]], float] = {}
        self._values: list[tuple[Any, float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def inc(self, counter: Any, value: float, tags: dict[str, str]) -> None:
        """Add to a counter."""
        key = (counter, tuple(tags.items()))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + value
        self._ensure_thread()

    def observe(self, histogram: Any, value: float, tags: dict[str, str]) -> None:
        """Record a histogram value."""
        with self._lock:
            self._values.append((histogram, value, tags))
            full = len(self._values) >= self._max_pending
        if full:  # the flusher fell behind: never hold more than max_pending points
            self.flush()
        self._ensure_thread()

    def flush(self) -> None:
        """Hand every pending point to Ray now."""
        with self._lock:
            counts, self._counts = self._counts, {}
            values, self._values = self._values, []
        for (counter, tag_items), total in counts.items():
            counter.inc(total, tags=dict(tag_items))
        for histogram, value, tags in values:
            histogram.observe(value, tags=tags)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, daemon=True, name="metrics-flush"
                    )
                    self._thread.start()

    def _run(self) -> None:
        event = threading.Event()
        while not event.wait(self._interval_s):
            try:
                self.flush()
            except Exception:  # a bad point must not stop the flusher
                logging.getLogger("servekit.metrics").exception("metrics flush failed")


# One per process: every metrics object of a replica hands its points to it.
RECORDS = RecordBuffer()


class GaugeKeeper:
    """Re-reports gauge values every few seconds.

    Ray's exporter drops a gauge value some time after it was last set, so a value
    set once (a replica being up, a traffic weight) would vanish from the scrape.
    """

    def __init__(self, interval_s: float = 5.0) -> None:
        self._values: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, float]] = {}
        self._watched: list[tuple[Any, Callable[[], float]]] = []
        self._lock = threading.Lock()
        self._interval_s = interval_s
        self._thread: threading.Thread | None = None

    def set(self, gauge: Any, value: float, tags: dict[str, str]) -> None:
        """Set now and keep re-reporting."""
        gauge.set(value, tags=tags)
        with self._lock:
            self._values[(id(gauge), tuple(sorted(tags.items())))] = (gauge, value)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="gauges")
                self._thread.start()

    def _run(self) -> None:
        event = threading.Event()
        while not event.wait(self._interval_s):
            with self._lock:
                items = list(self._values.items())
            for (_, tags), (gauge, value) in items:
                gauge.set(value, tags=dict(tags))
            with self._lock:
                watched = list(self._watched)
            for gauge, read in watched:
                gauge.set(read(), tags={})

    def watch(self, gauge: Any, read: Callable[[], float]) -> None:
        """Report what `read` answers now and every interval (off the request path)."""
        gauge.set(read(), tags={})
        with self._lock:
            self._watched.append((gauge, read))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="gauges")
                self._thread.start()


class IngressMetrics:
    """The ingress's metrics, created once per replica."""

    def __init__(self, tenants: frozenset[str] = frozenset()) -> None:
        self.tenants = tenants
        self.tenant_requests = Counter(
            "servekit_tenant_requests_total",
            description=CATALOGUE["servekit_tenant_requests_total"][1],
            tag_keys=("tenant", "code"),  # type: ignore[arg-type]
        )
        self.requests = Counter(
            "servekit_requests_total",
            description=CATALOGUE["servekit_requests_total"][1],
            tag_keys=("model", "version", "route", "code"),  # type: ignore[arg-type]
        )
        self.latency = Histogram(
            "servekit_request_duration_seconds",
            description=CATALOGUE["servekit_request_duration_seconds"][1],
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("model", "version", "route"),  # type: ignore[arg-type]
        )
        self.inputs = Histogram(
            "servekit_inputs_per_request",
            description=CATALOGUE["servekit_inputs_per_request"][1],
            boundaries=COUNT_BUCKETS,
            tag_keys=("model", "version"),  # type: ignore[arg-type]
        )

    def observe(
        self, model: str, version: str, route: str, code: int, seconds: float, inputs: int
    ) -> None:
        """Record one answered request."""
        RECORDS.inc(
            self.requests,
            1,
            {"model": model, "version": version, "route": route, "code": str(code)},
        )
        RECORDS.observe(self.latency, seconds, {"model": model, "version": version, "route": route})
        if inputs:
            RECORDS.observe(self.inputs, inputs, {"model": model, "version": version})

    def observe_tenant(self, tenant: str, code: int) -> None:
        """Record one request of an authenticated tenant (bounded: named or `other`)."""
        label = tenant if tenant in self.tenants else POOLED_TENANT
        RECORDS.inc(self.tenant_requests, 1, {"tenant": label, "code": str(code)})


class ModelMetrics:
    """A model replica's metrics, tagged with its model and version."""

    def __init__(self, model: str, version: str) -> None:
        self._tags = {"model": model, "version": version}
        self.batch_size = Histogram(
            "servekit_batch_size",
            description=CATALOGUE["servekit_batch_size"][1],
            boundaries=COUNT_BUCKETS,
            tag_keys=("model", "version"),  # type: ignore[arg-type]
        )
        self.inference = Histogram(
            "servekit_inference_duration_seconds",
            description=CATALOGUE["servekit_inference_duration_seconds"][1],
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("model", "version"),  # type: ignore[arg-type]
        )
        self.replicas = Gauge(
            "servekit_replicas",
            description=CATALOGUE["servekit_replicas"][1],
            tag_keys=("model", "version"),  # type: ignore[arg-type]
        )
        self.dropped_requests = Counter(
            "servekit_dropped_requests_total",
            description=CATALOGUE["servekit_dropped_requests_total"][1],
            tag_keys=("model", "version", "reason"),  # type: ignore[arg-type]
        )
        self._keeper = GaugeKeeper()
        self._keeper.set(self.replicas, 1, self._tags)

    def dropped(self, reason: str, requests: int = 1) -> None:
        """Count requests not run: queue_full, expired or cancelled."""
        RECORDS.inc(self.dropped_requests, requests, {**self._tags, "reason": reason})

    def observe_batch(self, inputs: int, seconds: float) -> None:
        """Record one model call."""
        RECORDS.observe(self.batch_size, inputs, self._tags)
        RECORDS.observe(self.inference, seconds, self._tags)


class RouterMetrics:
    """Traffic, rollback and shadow metrics of the ingress's version router."""

    def __init__(self) -> None:
        pair = ("model", "primary", "shadow")
        self._keeper = GaugeKeeper()
        self.weights = Gauge(
            "servekit_traffic_weight",
            description=CATALOGUE["servekit_traffic_weight"][1],
            tag_keys=("model", "version"),  # type: ignore[arg-type]
        )
        self.rollbacks = Counter(
            "servekit_rollbacks_total",
            description=CATALOGUE["servekit_rollbacks_total"][1],
            tag_keys=("model", "version"),  # type: ignore[arg-type]
        )
        self.shadow_requests = Counter(
            "servekit_shadow_requests_total",
            description=CATALOGUE["servekit_shadow_requests_total"][1],
            tag_keys=(*pair, "outcome"),  # type: ignore[arg-type]
        )
        self.shadow_latency = Histogram(
            "servekit_shadow_duration_seconds",
            description=CATALOGUE["servekit_shadow_duration_seconds"][1],
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=pair,  # type: ignore[arg-type]
        )
        self.shadow_cosine = Histogram(
            "servekit_shadow_cosine",
            description=CATALOGUE["servekit_shadow_cosine"][1],
            boundaries=COSINE_BUCKETS,
            tag_keys=pair,  # type: ignore[arg-type]
        )

    def weight(self, model: str, version: str, weight: int) -> None:
        """Record a version's effective weight."""
        self._keeper.set(self.weights, weight, {"model": model, "version": version})

    def rollback(self, model: str, version: str) -> None:
        """Count an automatic rollback."""
        self.rollbacks.inc(1, tags={"model": model, "version": version})

    def shadow(
        self,
        model: str,
        primary: str,
        shadow: str,
        outcome: str,
        seconds: float | None = None,
        cosines: list[float] | None = None,
    ) -> None:
        """Record one shadow copy's outcome, latency and divergence."""
        tags = {"model": model, "primary": primary, "shadow": shadow}
        self.shadow_requests.inc(1, tags={**tags, "outcome": outcome})
        if seconds is not None:
            self.shadow_latency.observe(seconds, tags=tags)
        for cosine in cosines or ():
            self.shadow_cosine.observe(cosine, tags=tags)


class SearchMetrics:
    """Index completeness of catalog search, per embedding space, and the fan-out
    rounds of searches over catalog shards."""

    def __init__(self) -> None:
        self._keeper = GaugeKeeper()
        self.pending = Gauge(
            "servekit_search_index_pending_items",
            description=CATALOGUE["servekit_search_index_pending_items"][1],
            tag_keys=("space",),
        )
        self.shard_rounds = Counter(
            "servekit_search_shard_rounds_total",
            description=CATALOGUE["servekit_search_shard_rounds_total"][1],
            tag_keys=("round",),
        )

    def pending_items(self, space: str, items: int) -> None:
        """Items of `space` still to embed."""
        self._keeper.set(self.pending, items, {"space": space})

    def shard_round(self, kind: str) -> None:
        """One fan-out round of a search over catalog shards."""
        RECORDS.inc(self.shard_rounds, 1, {"round": kind})


class CacheMetrics:
    """The embedding cache's lookups per tier and use, its Redis failures, and the bytes
    its memory tier holds (read every few seconds, off the request path)."""

    def __init__(self, memory_bytes: Callable[[], float]) -> None:
        self.lookups = Counter(
            "servekit_embedding_cache_lookups_total",
            description=CATALOGUE["servekit_embedding_cache_lookups_total"][1],
            tag_keys=("tier", "use", "result"),  # type: ignore[arg-type]
        )
        self.errors = Counter(
            "servekit_embedding_cache_redis_errors_total",
            description=CATALOGUE["servekit_embedding_cache_redis_errors_total"][1],
            tag_keys=("op",),
        )
        self.memory = Gauge(
            "servekit_embedding_cache_memory_bytes",
            description=CATALOGUE["servekit_embedding_cache_memory_bytes"][1],
        )
        self._keeper = GaugeKeeper()
        self._keeper.watch(self.memory, memory_bytes)

    def looked_up(self, use: str, tier: str, hits: int, misses: int) -> None:
        """Texts one tier answered or did not, for one lookup."""
        if hits:
            RECORDS.inc(self.lookups, hits, {"tier": tier, "use": use, "result": "hit"})
        if misses:
            RECORDS.inc(self.lookups, misses, {"tier": tier, "use": use, "result": "miss"})

    def redis_failed(self, op: str) -> None:
        """A Redis call that failed or timed out."""
        RECORDS.inc(self.errors, 1, {"op": op})


class RecommendMetrics:
    """Recommendation answers by version, source and whether degraded."""

    def __init__(self) -> None:
        self.answers = Counter(
            "servekit_recommendations_total",
            description=CATALOGUE["servekit_recommendations_total"][1],
            tag_keys=("version", "source", "degraded", "process"),  # type: ignore[arg-type]
        )

    def served(
        self, version: str, source: str, degraded: bool, seconds: float, process: str = "ingress"
    ) -> None:
        """One answer."""
        tags = {"version": version, "source": source, "degraded": str(degraded).lower(),
                "process": process}  # fmt: skip
        RECORDS.inc(self.answers, 1, tags)


class FeatureMetrics:
    """Events taken and refused, and the online feature store's failures."""

    def __init__(self) -> None:
        self.events = Counter(
            "servekit_events_total",
            description=CATALOGUE["servekit_events_total"][1],
            tag_keys=("outcome",),
        )
        self.errors = Counter(
            "servekit_feature_store_errors_total",
            description=CATALOGUE["servekit_feature_store_errors_total"][1],
            tag_keys=("op",),
        )

    def events_seen(self, accepted: int, rejected: int) -> None:
        """One batch's events, accepted and rejected."""
        if accepted:
            RECORDS.inc(self.events, accepted, {"outcome": "accepted"})
        if rejected:
            RECORDS.inc(self.events, rejected, {"outcome": "rejected"})

    def store_failed(self, op: str) -> None:
        """A store call that failed or timed out."""
        RECORDS.inc(self.errors, 1, {"op": op})
