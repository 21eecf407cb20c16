"""What the dashboard plots: servekit's counters and histograms as the nodes' metrics
endpoints export them, summed over replicas and nodes.

Ray's metrics agent exports every replica's series on its node's metrics port, tagged
with the replica; a sum over every node's endpoint is therefore the whole service's
count, however many ingress replicas there are and wherever they run. Nothing is added
to the request path: the figures are the ones `deployments/observability/metrics.py`
already records. Counters are totals since each replica started: the page takes rates
and quantiles from the difference of two snapshots, as Prometheus's `rate()` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

PREFIX = "ray_"  # Ray's prefix on every metric it exports

# Metric -> the labels the dashboard groups by (every other label is summed away).
COUNTERS: dict[str, tuple[str, ...]] = {
    "servekit_requests_total": ("model", "version", "route", "code"),
    "servekit_tenant_requests_total": ("tenant", "code"),
    "servekit_embedding_cache_lookups_total": ("tier", "use", "result"),
    "servekit_shadow_requests_total": ("model", "primary", "shadow", "outcome"),
    "servekit_dropped_requests_total": ("model", "version", "reason"),
}
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "servekit_request_duration_seconds": ("model", "version", "route"),
    "servekit_shadow_cosine": ("model", "primary", "shadow"),
}
TENANT_LABEL = "tenant"
MODEL_LABEL = "model"
NO_MODEL = "-"  # the model label of a request that names no served model

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Histogram:
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative
    count: float = 0.0
    total: float = 0.0


@dataclass
class Snapshot:
    """Counters and histograms of the service, summed over replicas and nodes."""

    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    histograms: dict[tuple[str, Labels], _Histogram] = field(default_factory=dict)

    def add_exposition(self, text: str) -> None:
        """Add one node's Prometheus text exposition (only servekit's metrics are read)."""
        for family in text_string_to_metric_families(_servekit_lines(text)):
            for sample in family.samples:
                self._add(sample.name.removeprefix(PREFIX), sample.labels, sample.value)

    def _add(self, name: str, labels: dict[str, str], value: float) -> None:
        if name in COUNTERS:
            key = (name, _keep(labels, COUNTERS[name]))
            self.counters[key] = self.counters.get(key, 0.0) + value
            return
        base, _, part = name.rpartition("_")
        if base not in HISTOGRAMS or part not in ("bucket", "count", "sum"):
            return
        histogram = self.histograms.setdefault(
            (base, _keep(labels, HISTOGRAMS[base])), _Histogram()
        )
        if part == "count":
            histogram.count += value
        elif part == "sum":
            histogram.total += value
        elif labels.get("le") not in (None, "+Inf"):
            bound = float(labels["le"])
            histogram.buckets[bound] = histogram.buckets.get(bound, 0.0) + value

    def for_tenant(self, tenant: str | None, may_use: Callable[[str], bool]) -> None:
        """Keep what a tenant's admin key may see: its own tenant's series (none when
        `tenant` is None: a tenant without series of its own is counted in the pooled
        one, which is every other tenant's too) and the series of the models the key
        may use (series without a model label stay: the cache's). Series of no model
        (`-`: catalog writes, events, admin calls, every tenant's 401s and 403s) are
        every tenant's together: the operator's alone."""

        def visible(labels: Labels) -> bool:
            model = dict(labels).get(MODEL_LABEL)
            return model is None or (model != NO_MODEL and may_use(model))

        self.counters = {
            key: value
            for key, value in self.counters.items()
            if dict(key[1]).get(TENANT_LABEL, tenant) == tenant and visible(key[1])
        }
        self.histograms = {key: value for key, value in self.histograms.items() if visible(key[1])}

    def document(self) -> dict[str, Any]:
        """As the JSON route answers: series sorted by name and labels."""
        counters = [
            {"name": name, "labels": dict(labels), "value": value}
            for (name, labels), value in sorted(self.counters.items())
        ]
        histograms = []
        for (name, labels), h in sorted(self.histograms.items(), key=lambda item: item[0]):
            bounds = sorted(h.buckets)
            histograms.append(
                {
                    "name": name,
                    "labels": dict(labels),
                    "bounds": bounds,
                    "counts": [h.buckets[b] for b in bounds],
                    "count": h.count,
                    "sum": h.total,
                }
            )
        return {"counters": counters, "histograms": histograms}


def _keep(labels: dict[str, str], names: tuple[str, ...]) -> Labels:
    return tuple((name, labels.get(name, "")) for name in names)


def _servekit_lines(text: str) -> str:
    """The lines of servekit's metrics (with their HELP and TYPE), not Ray's own."""
    wanted = f"{PREFIX}servekit_"
    out = []
    for line in text.splitlines():
        words = line.split(" ", 3)
        name = words[2] if line.startswith("# ") and len(words) > 2 else line
        if name.startswith(wanted):
            out.append(line)
    return "\n".join(out) + "\n"
