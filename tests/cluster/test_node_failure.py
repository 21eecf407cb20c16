"""A real two-node Ray cluster on this machine; the worker node dies abruptly under load.

Measures how many requests failed and how long until every request succeeded again.
The ingress retries an idempotent inference call once when its replica died, so the
goal is no failed request at all.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster_util import (
    RayNode,
    serve_deploy,
    serve_details,
)
from tests.conftest import REPO_ROOT, free_port
from tests.integration.conftest import dedicated_deployment
from tests.load_util import SteadyLoad

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _alive_nodes(head: RayNode) -> int:
    r = httpx.get(f"{head.dashboard}/api/v0/nodes", params={"limit": 100}, timeout=10)
    rows = r.json()["data"]["result"]["result"]
    return sum(1 for n in rows if n["state"] == "ALIVE")


def _config(port: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    doc["proxy_location"] = "HeadOnly"  # both nodes share one machine, hence one port
    doc["http_options"]["port"] = port
    app = doc["applications"][0]
    # Model replicas on both nodes: the model runs in deployments of its own here.
    app["args"]["models"]["minilm"]["placement"] = "dedicated"
    app["deployments"] += [dedicated_deployment(f"minilm-{v}") for v in ("v1", "v2")]
    app["deployments"][0]["user_config"].pop("batching", None)
    for entry in app["deployments"]:
        entry.pop("autoscaling_config", None)
        if entry["name"] == "Ingress":
            entry["user_config"]["traffic"]["minilm"] = {"v1": 100, "v2": 0}
            entry["num_replicas"] = 1
            entry["ray_actor_options"] = {"num_cpus": 0.5, "resources": {"servekit_head": 0.01}}
        elif entry["name"] == "minilm-v1":
            entry["num_replicas"] = 2
            entry["max_replicas_per_node"] = 1  # one replica on each node
        else:
            entry["num_replicas"] = 1
            entry["ray_actor_options"] = {"num_cpus": 1, "resources": {"servekit_head": 0.01}}
    return doc


def _v1_nodes(head: RayNode) -> set[str]:
    """Nodes with a RUNNING minilm-v1 replica (whatever the app's overall status:
    after a node loss Serve keeps trying to place the missing replica)."""
    apps: Any = serve_details(head).get("applications") or {}
    app = apps.get("servekit")
    if not app or "minilm-v1" not in app["deployments"]:
        return set()
    replicas = app["deployments"]["minilm-v1"]["replicas"]
    return {r["node_id"] for r in replicas if r["state"] == "RUNNING"}


def test_worker_node_dies_under_load(
    nodes: tuple[RayNode, RayNode], tmp_path: Path, example_store: Path, report: list[str]
) -> None:
    head, worker = nodes
    deadline = time.monotonic() + 90
    while _alive_nodes(head) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert _alive_nodes(head) == 2
    port = free_port()
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(_config(port), sort_keys=False))
    serve_deploy(config, head)
    deadline = time.monotonic() + 240
    while len(_v1_nodes(head)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(_v1_nodes(head)) == 2, "minilm-v1 replicas are not on both nodes"
    base_url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base_url}/v2/health/ready", timeout=10).status_code == 200

    with SteadyLoad(base_url, concurrency=8, pause_s=0.0) as load:
        time.sleep(5)
        before = load.result.total
        assert worker.pids(), "the worker node has no processes to kill"
        killed_at = time.monotonic()
        worker.stop(signal.SIGKILL)
        assert worker.pids() == []
        detected_s = None
        while time.monotonic() - killed_at < 60:
            if _alive_nodes(head) == 1 and len(_v1_nodes(head)) == 1:
                detected_s = time.monotonic() - killed_at
                break
            time.sleep(0.5)
        time.sleep(5)
    result = load.result
    failures_after = [t - killed_at for t, _ in result.failures if t >= killed_at]
    whole_after_s = max(failures_after, default=0.0)
    report.append(
        f"node failure: {result.summary()}; {result.total - before} requests after the kill, "
        f"{len(failures_after)} failed; every request succeeded again "
        f"{whole_after_s:.1f} s after the kill; the cluster saw the node dead and its "
        f"replica gone after {detected_s and round(detected_s, 1)} s; "
        f"failures: {result.failures[:3]}"
    )
    assert detected_s is not None, "the dead node was never noticed"
    assert result.total - before > 50
    assert result.failures == []
    # Afterwards the service still answers on the surviving node.
    assert httpx.get(f"{base_url}/v2/health/ready", timeout=10).status_code == 200
