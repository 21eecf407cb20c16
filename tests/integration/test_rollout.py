"""Sticky A/B, shadow traffic and canary rollback on the real service."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from deployments.routing.shadow import MAX_SHADOW_IN_FLIGHT_PER_VERSION
from tests.conftest import REPO_ROOT
from tests.integration.conftest import Service
from tests.integration.test_metrics import scrape_until

pytestmark = pytest.mark.integration


def _ingress_config(config: dict[str, Any]) -> dict[str, Any]:
    entry = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    user_config: dict[str, Any] = entry["user_config"]
    return user_config


@pytest.fixture
def live(service: Service) -> Iterator[dict[str, Any]]:
    """A copy of the config to change; the original is restored afterwards."""
    original = copy.deepcopy(service.config)
    yield copy.deepcopy(service.config)
    service.redeploy(original)


def _detail(service: Service) -> dict[str, Any]:
    with service.client() as client:
        body: dict[str, Any] = client.get("/v1/models/minilm").json()
    return body


def test_routing_key_is_sticky_and_monotone(service: Service, live: dict[str, Any]) -> None:
    users = [f"user-{i}" for i in range(60)]

    def assignment() -> dict[str, str]:
        out = {}
        with service.client() as client:
            for user in users:
                r = client.post(
                    "/v1/embeddings", json={"model": "minilm", "input": "x", "user": user}
                )
                out[user] = r.headers["x-model-version"]
            # the header wins over the body's user, and OIP takes the header too
            r = client.post(
                "/v1/embeddings",
                json={"model": "minilm", "input": "x", "user": "someone-else"},
                headers={"X-Routing-Key": users[0]},
            )
            assert r.headers["x-model-version"] == out[users[0]]
        return out

    first = assignment()
    assert assignment() == first
    _ingress_config(live)["traffic"]["minilm"].update({"v1": 60, "v2": 40})
    service.redeploy(live)
    time.sleep(2)
    second = assignment()
    on_candidate = [u for u, v in first.items() if v == "v2"]
    assert all(second[u] == "v2" for u in on_candidate)
    assert Counter(second.values())["v2"] >= len(on_candidate)


def test_shadow_copies_do_not_hold_the_caller(
    service: Service, live: dict[str, Any], report: list[str]
) -> None:
    _ingress_config(live)["traffic"]["minilm"].update({"v1": 100, "v2": 0})
    _ingress_config(live)["shadow"] = {"minilm": {"version": "v2-slow", "fraction": 1.0}}
    service.redeploy(live)
    time.sleep(2)
    latencies = []
    with service.client() as client:
        for i in range(12):
            started = time.perf_counter()
            r = client.post("/v1/embeddings", json={"model": "minilm", "input": f"shadowed {i}"})
            latencies.append(time.perf_counter() - started)
            assert r.status_code == 200
            assert r.headers["x-model-version"] == "v1"
    deadline = time.monotonic() + 30
    pair: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pair = _detail(service)["shadow"]["pairs"].get("v1->v2-slow", {})
        if (
            pair.get("requests", 0) + pair.get("dropped", 0) >= 12
            and pair.get("mean_cosine") is not None
        ):
            break
        time.sleep(0.5)
    latencies.sort()
    report.append(
        f"shadow to a 400 ms-slow version: caller p50 {latencies[6] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms; shadow mean cosine vs v1 {pair.get('mean_cosine')}"
    )
    # The shadow takes 400 ms a call; the caller never waits for it.
    assert latencies[-1] < 0.3
    # One copy per request; with the shadow taking 400 ms, those past the cap of copies
    # in flight per shadow version are dropped (counted), never queued.
    assert pair["requests"] + pair["dropped"] == 12
    assert pair["requests"] >= MAX_SHADOW_IN_FLIGHT_PER_VERSION
    assert pair["errors"] == 0
    assert 0.98 <= pair["mean_cosine"] <= 1.0

    def shadow_metrics(text: str) -> bool:
        return any(
            line.startswith("ray_servekit_shadow_cosine_bucket{") and 'shadow="v2-slow"' in line
            for line in text.splitlines()
        )

    assert shadow_metrics(scrape_until(service, shadow_metrics))


@pytest.mark.parametrize(
    ("canary", "policy"),
    [
        ("v2-faulty", {"max_error_rate": 0.2, "window_s": 30, "min_requests": 10}),
        ("v2-slow", {"max_p95_latency_ms": 200, "window_s": 30, "min_requests": 10}),
    ],
)
def test_canary_breach_rolls_back_automatically(
    service: Service, live: dict[str, Any], canary: str, policy: dict[str, Any], report: list[str]
) -> None:
    from ray import serve

    _ingress_config(live)["traffic"]["minilm"].update({"v1": 50, "v2": 0, canary: 50})
    _ingress_config(live)["rollout"] = {"minilm": {"canary": canary, **policy}}
    service.redeploy(live)
    time.sleep(2)
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    with service.client() as client:
        for i in range(80):
            r = client.post("/v1/embeddings", json={"model": "minilm", "input": f"c{i}"})
            statuses[r.status_code] += 1
            if _detail(service)["rollout"]["state"] == "rolled_back":
                break
        detail = _detail(service)
        elapsed = time.monotonic() - started
        after = Counter(
            client.post("/v1/embeddings", json={"model": "minilm", "input": "after"}).headers[
                "x-model-version"
            ]
            for _ in range(20)
        )
    rollout = detail["rollout"]
    report.append(
        f"canary {canary}: rolled back after {sum(statuses.values())} requests "
        f"({elapsed:.1f} s): {rollout['reason']}"
    )
    assert rollout["state"] == "rolled_back"
    assert rollout["reason"].startswith("error rate" if "faulty" in canary else "p95 latency")
    weights = {v["name"]: v["weight"] for v in detail["versions"]}
    assert weights[canary] == 0
    assert weights["v1"] == 100
    assert after == Counter({"v1": 20})
    # The canary's replicas keep running for inspection.
    from ray.serve._private.common import ReplicaState

    status = serve.status().applications["servekit"].deployments[f"minilm-{canary}"]
    assert status.replica_states.get(ReplicaState.RUNNING, 0) == 1

    def counted(text: str) -> bool:
        return any(
            line.startswith("ray_servekit_rollbacks_total{") and f'version="{canary}"' in line
            for line in text.splitlines()
        )

    assert counted(scrape_until(service, counted))

    # The operator clears the rollback (the canary was fixed, say): every replica gives
    # the canary its weight back at its next sync, and watches it afresh.
    import ray

    cleared = subprocess.run(
        [sys.executable, "-m", "servekit", "rollout", "clear", "minilm",
         "--config", str(REPO_ROOT / "serve_config.yaml"),
         "--address", ray.get_runtime_context().gcs_address],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert "cleared the canary rollback of minilm" in cleared.stdout
    deadline = time.monotonic() + 10
    while _detail(service)["rollout"]["state"] != "watching" and time.monotonic() < deadline:
        time.sleep(0.2)
    back = _detail(service)
    assert back["rollout"]["state"] == "watching"
    assert {v["name"]: v["weight"] for v in back["versions"]}[canary] == 50
