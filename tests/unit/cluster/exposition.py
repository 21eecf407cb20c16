"""servekit's metrics as Prometheus scrapes them from a node's Ray metrics agent.

Every metric class of `deployments/observability/metrics.py` is built as a replica
builds it (Ray Serve's metric classes, inside a replica's context, so Serve adds its
`deployment`, `replica` and `application` tags) and records one point of each kind the
service records; the points reach the exposition through Ray's own OpenTelemetry
recorder and Prometheus exporter, as they do on a node: the `ray_` prefix, `_total` on
counters, `_bucket`/`_sum`/`_count` on histograms (their `_sum` rebuilt from bucket
midpoints, as Ray's agent rebuilds it). Tests compare the monitoring's queries with it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.observability import metrics

# What the Ray pod's scrape adds (the PodMonitor's target labels and relabelings).
TARGET_LABELS = frozenset(
    {"job", "namespace", "pod", "container", "endpoint", "instance", "ray_node_type", "ray_group"}
)
# Ray Serve's tags on every metric a replica defines.
SERVE_TAGS = {"application": "servekit", "deployment": "Ingress", "replica": "Ingress#r1"}


@dataclass
class Family:
    """One exported metric: its type and every sample (name, labels)."""

    kind: str
    samples: list[tuple[str, dict[str, str]]] = field(default_factory=list)


class _ToRecorder:
    """Stands in for Ray's Cython metric: hands each point to the agent's recorder."""

    def __init__(self, recorder: Any, kind: str, name: str, description: str, bounds: Any):
        self.recorder, self.kind, self.name, self.bounds = recorder, kind, name, bounds
        if kind == "counter":
            recorder.register_counter_metric(name, description)
        elif kind == "gauge":
            recorder.register_gauge_metric(name, description)
        else:
            recorder.register_histogram_metric(name, description, list(bounds))

    def record(self, value: float, tags: dict[str, str]) -> None:
        if self.kind != "histogram":
            self.recorder.set_metric_value(self.name, tags, value)
            return
        counts = [0] * (len(self.bounds) + 1)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        point = {"tags": tags, "bucket_counts": counts}
        self.recorder.record_histogram_aggregated_batch(self.name, [point])


def _recording(recorder: Any) -> dict[str, type]:
    """Ray Serve's metric classes, each handing its points to `recorder`."""
    from ray.serve import metrics as serve

    class Counter(serve.Counter):
        def __init__(self, name: str, description: str = "", tag_keys: Any = None) -> None:
            super().__init__(name, description, tag_keys)
            self._metric = _ToRecorder(recorder, "counter", name, description, None)  # type: ignore[assignment]

    class Gauge(serve.Gauge):
        def __init__(self, name: str, description: str = "", tag_keys: Any = None) -> None:
            super().__init__(name, description, tag_keys)
            self._metric = _ToRecorder(recorder, "gauge", name, description, None)  # type: ignore[assignment]

    class Histogram(serve.Histogram):
        def __init__(
            self, name: str, description: str = "", boundaries: Any = None, tag_keys: Any = None
        ) -> None:
            super().__init__(name, description, boundaries, tag_keys)
            self._metric = _ToRecorder(recorder, "histogram", name, description, boundaries)  # type: ignore[assignment]

    return {"Counter": Counter, "Gauge": Gauge, "Histogram": Histogram}


@contextmanager
def _in_a_replica() -> Iterator[None]:
    from ray.serve import context

    replica = SimpleNamespace(
        app_name=SERVE_TAGS["application"],
        deployment=SERVE_TAGS["deployment"],
        replica_tag=SERVE_TAGS["replica"],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context, "_get_internal_replica_context", lambda: replica)
        yield


def _record_one_of_each() -> None:
    """One point of every kind the service records, with the label values its code
    passes (the closed sets: reasons, outcomes, tiers, uses, results, operations)."""
    from stores.embed_cache import MEMORY, REDIS

    ingress = metrics.IngressMetrics(frozenset({"acme"}))
    for code in (200, 400, 401, 404, 429, 499, 500, 503, 504):
        ingress.observe("minilm", "v1", "/v1/embeddings", code, 0.02, 3)
    ingress.observe("-", "-", "-", 401, 0.001, 0)  # refused by the auth gate
    ingress.observe_tenant("acme", 200)
    ingress.observe_tenant("someone-else", 429)  # pooled as `other`
    model = metrics.ModelMetrics("minilm", "v1")
    model.observe_batch(4, 0.01)
    for reason in ("queue_full", "expired", "cancelled"):
        model.dropped(reason)
    router = metrics.RouterMetrics()
    router.weight("minilm", "v1", 90)
    router.rollback("minilm", "v2")
    router.shadow("minilm", "v1", "v2", "ok", 0.01, [0.99])
    for outcome in ("error", "dropped"):
        router.shadow("minilm", "v1", "v2", outcome)
    search = metrics.SearchMetrics()
    search.pending_items("minilm/v2", 12)
    for kind in ("stats", "candidates", "stale"):
        search.shard_round(kind)
    cache = metrics.CacheMetrics(lambda: 4096.0)
    for use in ("search", "embeddings"):
        for tier in (MEMORY, REDIS):
            cache.looked_up(use, tier, 1, 1)
    for op in ("get", "put", "retain"):
        cache.redis_failed(op)
    answers = metrics.RecommendMetrics()
    answers.served("v1", "model", False, 0.01, "worker")
    answers.served("v1", "popular", True, 0.01, "ingress")
    features = metrics.FeatureMetrics()
    features.events_seen(accepted=2, rejected=1)
    for op in ("read", "merge"):
        features.store_failed(op)


@cache
def _recorder() -> Any:
    """The process's one recorder: OpenTelemetry keeps the first instrument of a name
    (and its callback) for the life of the process, as Ray's agent does."""
    from ray._private.telemetry.open_telemetry_metric_recorder import (
        OpenTelemetryMetricRecorder,
    )

    return OpenTelemetryMetricRecorder(gauge_metric_ttl_seconds=3600)


def render(record: Callable[[], None] = _record_one_of_each) -> str:
    """The text exposition of servekit's metrics after `record` (one point of each
    kind, by default) built and used the metrics module's classes."""
    from prometheus_client import REGISTRY, generate_latest

    with _in_a_replica(), pytest.MonkeyPatch.context() as patch:
        for name, cls in _recording(_recorder()).items():
            patch.setattr(metrics, name, cls)
        record()
        metrics.RECORDS.flush()
    text: str = generate_latest(REGISTRY).decode()
    return text


def families(text: str) -> dict[str, Family]:
    """servekit's families of an exposition by name, with their samples."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Family] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("ray_servekit_"):
            continue
        found = out.setdefault(family.name, Family(family.type))
        found.samples += [(s.name, dict(s.labels)) for s in family.samples]
    return out
