"""Prometheus metrics per model and version, scraped from Ray's metrics endpoint."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import pytest

from deployments.observability.metrics import CATALOGUE
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


def scrape_until(service: Service, predicate: Callable[[str], bool], timeout_s: float = 60) -> str:
    """Scrape the metrics endpoint until `predicate(text)` holds (export is periodic)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"{service.metrics_url}/metrics", timeout=10).text
        if predicate(text):
            break
        time.sleep(1)
    return text


def test_metrics_are_exported_per_model_and_version(service: Service) -> None:
    with service.client() as client:
        for version in ("v1", "v2"):
            r = client.post(
                "/v1/embeddings",
                json={"model": "minilm", "input": ["metrics", "zq-marker-7731"]},
                headers={"X-Model-Version": version},
            )
            assert r.status_code == 200
        search = {"catalog": "metrics", "query": "zq-marker-7731", "user": "one-version"}
        for _ in range(2):  # the query embedded, then found in the embedding cache
            r = client.post("/v1/search", json=search)
            assert r.status_code == 200, r.text
    # Shadow, rollback, drop and Redis error metrics appear with their first event (see
    # test_rollout.py and test_overload.py; the test service runs the cache without Redis);
    # so do the events' and the feature store's (test_events.py) and the recommendations'
    # (test_recommendations.py), and the rounds of a search over catalog shards
    # (tests/cluster/test_sharded_search.py).
    skipped = ("servekit_shadow", "servekit_rollbacks", "servekit_dropped")
    wanted = [
        f"ray_{name}"
        for name in CATALOGUE
        if not name.startswith(
            (
                *skipped,
                "servekit_embedding_cache_redis",
                "servekit_events",
                "servekit_feature",
                "servekit_recommendations",
                "servekit_search_shard_rounds",
            )
        )
    ]

    def ok(text: str) -> bool:
        # Gauges are re-reported every few seconds; the rest appear with their events.
        lines = [ln for ln in text.splitlines() if ln.startswith("ray_servekit_requests_total{")]
        replicas = [ln for ln in text.splitlines() if ln.startswith("ray_servekit_replicas{")]
        # Every version with traffic has a replica: the recommender's too (the
        # version-without-replicas alert reads this).
        recommender = any('model="recommender"' in ln and 'version="v1"' in ln for ln in replicas)
        return (
            recommender
            and all(name in text for name in wanted)
            and any(
                'model="minilm"' in ln
                and 'version="v1"' in ln
                and 'code="200"' in ln
                and 'route="/v1/embeddings"' in ln
                for ln in lines
            )
        )

    text = scrape_until(service, ok)
    present = {
        re.sub(r"_(bucket|sum|count)$", "", m)
        for m in re.findall(r"^(ray_servekit_\w+)", text, re.M)
    }
    requests = [
        ln[:300] for ln in text.splitlines() if ln.startswith("ray_servekit_requests_total{")
    ]
    assert ok(text), {"missing": sorted(set(wanted) - set(present)), "requests": requests[:6]}
    assert "zq-marker-7731" not in text  # labels never carry request content
