"""One real local Ray instance per test session, serving a config derived from
`serve_config.yaml` (same models and artifacts; test-sized limits and autoscaling)."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from configs.schema import DIRECT_SCALING_POLICY
from tests.conftest import REPO_ROOT, auth_headers, free_port
from tests.otlp_collector import Collector

APP = "servekit"
# Test-sized limits, so every limit can be hit with small requests.
LIMITS = {"max_inputs_per_request": 64, "max_input_chars": 2000, "max_body_bytes": 200_000}
# minilm-v2 scales fast in tests; serve_config.yaml keeps production delays.
FAST_AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
    "policy": {"policy_function": DIRECT_SCALING_POLICY},
}


# A second model, the same two versions placed inline in the ingress replica.
INLINE_MODEL = "minilm-inline"

FAULTY_VERSIONS = {
    "v2-faulty": {"error_rate": 1.0},
    "v2-slow": {"extra_latency_ms": 400},
}


def dedicated_deployment(name: str) -> dict[str, Any]:
    """A `<model>-<version>` deployment entry for a model placed `dedicated`."""
    return {
        "name": name,
        "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002},
        "max_ongoing_requests": 256,
        "max_queued_requests": 1024,
        "graceful_shutdown_timeout_s": 30,
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": 2,
            "policy": {"policy_function": DIRECT_SCALING_POLICY},
        },
        "ray_actor_options": {"num_cpus": 1},
    }


def make_test_config(http_port: int) -> dict[str, Any]:
    """`serve_config.yaml` with test ports, limits and autoscaling.

    The shipped model runs inline in the Ingress; here it is served twice: as shipped
    under `minilm-inline`, and with `placement: dedicated` under `minilm`, so both
    paths run in every test session.
    """
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["http_options"]["port"] = http_port
    app = doc["applications"][0]
    app["args"]["limits"] = LIMITS
    app["args"]["request_timeout_s"] = 20
    shipped = copy.deepcopy(app["args"]["models"]["minilm"])
    app["args"]["models"]["minilm"]["placement"] = "dedicated"
    app["deployments"] += [dedicated_deployment(f"minilm-{v}") for v in ("v1", "v2")]
    # Canaries that misbehave on purpose (test-only fault injection), without traffic.
    versions = app["args"]["models"]["minilm"]["versions"]
    for name, fault in FAULTY_VERSIONS.items():
        versions[name] = {**versions["v2"], "fault_injection": fault}
        app["deployments"].append(
            {"name": f"minilm-{name}", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}}
        )
    app["args"]["models"][INLINE_MODEL] = shipped
    for entry in app["deployments"]:
        if entry["name"] == "minilm-v2":
            entry["autoscaling_config"] = FAST_AUTOSCALING
        if entry["name"] == "Ingress":
            entry["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
            entry["user_config"]["traffic"]["minilm"].update(dict.fromkeys(FAULTY_VERSIONS, 0))
            entry["user_config"]["traffic"][INLINE_MODEL] = {"v1": 50, "v2": 50}
            shipped_batching = entry["user_config"]["batching"]
            entry["user_config"]["batching"] = {
                f"{INLINE_MODEL}-{v}": dict(shipped_batching[f"minilm-{v}"]) for v in ("v1", "v2")
            }
            entry["user_config"]["batching"][f"{INLINE_MODEL}-v1"]["max_batch_size"] = 8
            entry["ray_actor_options"] = {"num_cpus": 0.5}
    return dict(doc)


@dataclass
class Service:
    """The running service under test."""

    base_url: str
    metrics_url: str
    config: dict[str, Any]

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client bound to the service, with the test tenant's key unless
        `headers` has an Authorization of its own."""
        kwargs["headers"] = {**auth_headers(), **(kwargs.get("headers") or {})}
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    def redeploy(self, config: dict[str, Any]) -> None:
        """Apply a changed config, as `serve deploy` would."""
        from servekit import local

        local.deploy(config)
        self.config = config


@pytest.fixture(scope="session")
def otlp_collector() -> Iterator[Collector]:
    """Where the instance's replicas send traces. Only requests whose caller's
    `traceparent` is sampled are traced (the share of the others is 0), so no other
    test's request leaves a span."""
    collector = Collector().start()
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = collector.url
    os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0"
    try:
        yield collector
    finally:
        collector.stop()


@pytest.fixture(scope="session")
def service(example_store: Any, otlp_collector: Collector) -> Iterator[Service]:
    """Start Ray once, deploy the test config, wait until ready; stop it all at the end.
    Its processes get the environment as it is now (the trace collector's too)."""
    from servekit import local

    port, metrics_port = free_port(), free_port()
    config = make_test_config(port)
    problems = local.check_document(config)
    assert problems == []
    local.start_ray(metrics_port=metrics_port)
    try:
        local.deploy(config)
        svc = Service(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", config)
        wait_ready(svc)
        yield svc
    finally:
        local.shutdown()


def wait_ready(svc: Service, timeout_s: float = 120) -> None:
    """Block until `/v2/health/ready` answers 200; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with svc.client() as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/v2/health/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    pytest.fail("service did not become ready")


def entry(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry of deployment `name` in a config's first application."""
    deployments = config["applications"][0]["deployments"]
    return next(d for d in deployments if d["name"] == name)  # type: ignore[no-any-return]


def running_replicas(deployment: str) -> list[str]:
    """Ids of the running replicas of a deployment."""
    from ray.serve._private.common import DeploymentID, ReplicaState
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    import ray

    infos = ray.get(
        controller._dump_replica_states_for_testing.remote(DeploymentID(deployment, "servekit"))
    )
    return [r.replica_id.unique_id for r in infos.get([ReplicaState.RUNNING])]


def wait_running(ok: Any, deployment: str, timeout_s: float = 90) -> list[str]:
    """Until `ok(number of running replicas)`; their ids."""
    deadline = time.monotonic() + timeout_s
    ids: list[str] = []
    while time.monotonic() < deadline:
        ids = running_replicas(deployment)
        if ok(len(ids)):
            return ids
        time.sleep(0.5)
    pytest.fail(f"{deployment}: running replicas {ids}")
