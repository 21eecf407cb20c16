"""Promotion by config under steady load, the way it is done on a cluster:
`ray start --head` with servekit's Serve settings (HAProxy in front), then
`serve deploy serve_config.yaml`, as shipped, for every change.

Weights change live (no replica restarts); a new version is added (the Ingress
replica, where the shipped model's versions run, is replaced by one that has it),
takes the traffic, and the old versions are retired, all without one failed request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster_util import RayNode, cluster_env, serve_deploy, serve_details, start_head
from tests.conftest import REPO_ROOT, free_port
from tests.load_util import SteadyLoad

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNode]:
    node = start_head(tmp_path_factory.mktemp("ray"))
    try:
        yield node
    finally:
        node.stop()


def _app(doc: dict[str, Any]) -> dict[str, Any]:
    app: dict[str, Any] = doc["applications"][0]
    return app


def _replica_ids(node: RayNode) -> dict[str, set[str]]:
    apps: Any = serve_details(node)["applications"]
    return {
        name: {r["replica_id"] for r in d["replicas"] if r["state"] == "RUNNING"}
        for name, d in apps["servekit"]["deployments"].items()
    }


def _wait_running(
    node: RayNode, base_url: str, replaced: set[str] | None = None, timeout_s: float = 240
) -> set[str]:
    """Until the app runs and answers; with `replaced`, also until none of those
    Ingress replicas is left. Returns the running Ingress replica ids."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps: Any = serve_details(node).get("applications") or {}
        app = apps.get("servekit")
        ids = _replica_ids(node).get("Ingress", set()) if app else set()
        if app and app["status"] == "RUNNING" and ids and not ids & (replaced or set()):
            try:
                if httpx.get(f"{base_url}/v2/health/ready", timeout=5).status_code == 200:
                    return ids
            except httpx.HTTPError:
                pass
        time.sleep(1)
    pytest.fail(f"servekit not running (replacing {replaced}) after {timeout_s} s")


def _promote(config: Path, node: RayNode, version: str, weight: int) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "servekit", "promote", "minilm", version, "--weight", str(weight),
         "--config", str(config), "--address", node.dashboard],
        capture_output=True, text=True, check=False, env=cluster_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def _wait_share(load: SteadyLoad, version: str, low: float, high: float, since: float) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = load.versions_since(since)
        n = sum(seen.values())
        if n >= 40 and low <= seen[version] / n <= high:
            return
        if n >= 40:
            since = time.monotonic() - 2
        time.sleep(1)
    pytest.fail(f"share of {version} never reached {low:.0%}..{high:.0%}")


def test_promote_add_and_retire_versions_with_zero_drops(
    head: RayNode, tmp_path: Path, example_store: Path, report: list[str]
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    config = tmp_path / "serve_config.yaml"
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["port"] = port
    # What this test counts is requests lost to the rollout, not load shedding (see
    # test_overload.py): while a new Ingress replica loads its models beside the old one
    # on this 2-core machine, the shipped 0.5 s wait bound may shed a request.
    ingress = next(d for d in _app(doc)["deployments"] if d["name"] == "Ingress")
    for batching in ingress["user_config"]["batching"].values():
        batching["max_queue_wait_s"] = 2.0
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    serve_deploy(config, head)
    _wait_running(head, base_url)

    with SteadyLoad(base_url) as load:
        time.sleep(3)
        # 1. 90/10 -> 50/50: user_config only, live, no replica restarts.
        before = _replica_ids(head)
        changed = time.monotonic()
        _promote(config, head, "v2", 50)
        _wait_share(load, "v2", 0.3, 0.7, changed + 1)
        switch_s = time.monotonic() - changed
        assert _replica_ids(head) == before

        # 2. A new version (torch runtime) joins with weight 0: an args change, so the
        #    Ingress replica is replaced by one that loads v3 too.
        doc = yaml.safe_load(config.read_text())
        manifest = json.loads((example_store / "manifest.json").read_text())["models"]["minilm"]
        _app(doc)["args"]["models"]["minilm"]["versions"]["v3"] = {
            "artifact": {"uri": "artifacts/minilm/v1-torch.tar",
                         "sha256": manifest["versions"]["v1-torch"]["sha256"]},
            "runtime": "torch",
        }  # fmt: skip
        ingress = next(d for d in _app(doc)["deployments"] if d["name"] == "Ingress")
        ingress["user_config"]["traffic"]["minilm"]["v3"] = 0
        # The torch build runs slower than the ONNX ones and starts while the old
        # replica still serves: its queue bound too, as above.
        ingress["user_config"].setdefault("batching", {})["minilm-v3"] = {"max_queue_wait_s": 2.0}
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        serve_deploy(config, head)
        replicas = _wait_running(head, base_url, replaced=before["Ingress"])

        # 3. The new version takes all traffic (live).
        changed = time.monotonic()
        _promote(config, head, "v3", 100)
        _wait_share(load, "v3", 1.0, 1.0, changed + 1)

        # 4. Retire v1 and v2: they have no traffic left; remove them (and their
        #    batching settings); the Ingress is replaced by one without them.
        doc = yaml.safe_load(config.read_text())
        ingress = next(d for d in _app(doc)["deployments"] if d["name"] == "Ingress")
        for old in ("v1", "v2"):
            del _app(doc)["args"]["models"]["minilm"]["versions"][old]
            del ingress["user_config"]["traffic"]["minilm"][old]
            ingress["user_config"].get("batching", {}).pop(f"minilm-{old}", None)
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        serve_deploy(config, head)
        _wait_running(head, base_url, replaced=replicas)
        time.sleep(3)
    result = load.result
    report.append(
        f"zero-drop rollout (serve deploy on ray start --head): {result.summary()}; "
        f"weight change visible after {switch_s:.1f} s"
    )
    assert result.failures == []
    assert result.non_2xx == 0
    assert sum(result.errors.values()) == 0
    assert result.total > 100
