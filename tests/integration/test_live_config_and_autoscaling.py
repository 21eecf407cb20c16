"""Live knobs change without restarts; a version's replicas follow its load."""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import auth_headers
from tests.integration.conftest import APP, Service

pytestmark = pytest.mark.integration


def replica_actor_ids(deployment: str) -> set[str]:
    """Ids of the actors of a deployment's running replicas, as Serve's controller
    reports them (the local instance runs without Ray's dashboard)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None
    details = client.get_serve_details()
    replicas = details["applications"][APP]["deployments"][deployment]["replicas"]
    return {r["actor_id"] for r in replicas if r["state"] == "RUNNING"}


def running_replicas(deployment: str) -> int:
    """Replicas Serve reports RUNNING for a deployment."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    status = serve.status().applications[APP].deployments[deployment]
    return int(status.replica_states.get(ReplicaState.RUNNING, 0))


def _entry(config: dict[str, Any], name: str) -> dict[str, Any]:
    deployments: list[dict[str, Any]] = config["applications"][0]["deployments"]
    return next(d for d in deployments if d["name"] == name)


@pytest.fixture
def restore(service: Service) -> Iterator[None]:
    original = copy.deepcopy(service.config)
    yield
    service.redeploy(original)


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.usefixtures("restore")
def test_batching_changes_live_without_restart(service: Service) -> None:
    from ray import serve

    handle = serve.get_deployment_handle("minilm-v1", app_name=APP)
    before = replica_actor_ids("minilm-v1")
    assert before
    config = copy.deepcopy(service.config)
    _entry(config, "minilm-v1")["user_config"] = {"max_batch_size": 7, "batch_wait_timeout_s": 0.01}
    service.redeploy(config)
    _wait(
        lambda: handle.batch_settings.remote().result()["max_batch_size"] == 7,
        60,
        "the new batch size",
    )
    assert handle.batch_settings.remote().result()["batch_wait_timeout_s"] == 0.01
    assert replica_actor_ids("minilm-v1") == before


@pytest.mark.usefixtures("restore")
def test_traffic_weights_change_live_without_restart(service: Service) -> None:
    before = replica_actor_ids("Ingress") | replica_actor_ids("minilm-v1")
    config = copy.deepcopy(service.config)
    _entry(config, "Ingress")["user_config"]["traffic"]["minilm"].update({"v1": 0, "v2": 100})
    service.redeploy(config)
    with service.client() as client:

        def all_v2() -> bool:
            seen = Counter(
                client.post("/v1/embeddings", json={"model": "minilm", "input": "x"}).headers[
                    "x-model-version"
                ]
                for _ in range(10)
            )
            return seen == Counter({"v2": 10})

        _wait(all_v2, 60, "all traffic on v2")
        weights = client.get("/v1/models").json()["data"][0]["versions"]
    assert {v["name"]: v["weight"] for v in weights if v["name"] in ("v1", "v2")} == {
        "v1": 0,
        "v2": 100,
    }
    assert replica_actor_ids("Ingress") | replica_actor_ids("minilm-v1") == before


def _direct_served(deployment: str) -> dict[str, int]:
    """Direct calls each running replica of a dedicated version has answered."""
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=APP)
    seen: dict[str, int] = {}
    for _ in range(60):
        stats = handle.direct_stats.remote().result()
        assert stats["open"], stats
        seen[stats["replica"]] = stats["served"]
        if len(seen) >= running_replicas(deployment):
            break
    return seen


def test_the_ingress_calls_a_dedicated_version_directly(service: Service) -> None:
    before = sum(_direct_served("minilm-v2").values())
    with service.client() as client:
        for i in range(20):
            r = client.post(
                "/v1/embeddings",
                json={"model": "minilm", "input": f"direct {i}"},
                headers={"X-Model-Version": "v2"},
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-model-version"] == "v2"
            assert len(r.json()["data"][0]["embedding"]) == 384
    # Every request went over the direct connection, none through Serve's handle (the
    # Ingress's health checks of the version go through the handle, and count nothing).
    assert sum(_direct_served("minilm-v2").values()) - before >= 20


def test_version_autoscales_up_and_down(service: Service, report: list[str]) -> None:
    stop = threading.Event()
    failures: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=service.base_url, timeout=60, headers=auth_headers()) as client:
            while not stop.is_set():
                r = client.post(
                    "/v1/embeddings",
                    json={"model": "minilm", "input": ["load " * 40] * 8},
                    headers={"X-Model-Version": "v2"},
                )
                if r.status_code != 200:
                    failures.append(r.status_code)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(10)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        _wait(lambda: running_replicas("minilm-v2") >= 2, 90, "minilm-v2 to scale up")
        up_s = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    stopped = time.monotonic()
    _wait(lambda: running_replicas("minilm-v2") == 1, 120, "minilm-v2 to scale back down")
    down_s = time.monotonic() - stopped
    report.append(
        f"autoscaling minilm-v2: 1 -> 2 replicas {up_s:.1f} s after load began, "
        f"back to 1 {down_s:.1f} s after it stopped; non-2xx during load: {len(failures)}"
    )
    assert failures == []
    assert running_replicas("minilm-v1") == 1
