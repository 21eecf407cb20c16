"""The README's rollout runbook, step by step, through the `servekit` command, as an ML
engineer runs it against a running service: add a version (the torch build of the
example model, `v1-torch`, declared as `v3`), shadow it, canary it, see it rolled back,
fix it with an `args` change (the rollback stays), clear the rollback, widen it to all
traffic. The file is a copy of the service's config; the commands reach the session's
instance as a Ray driver at its GCS address."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Service, wait_ready

pytestmark = pytest.mark.integration

# A canary that fails every call ("a bad build"), watched with a small window.
POLICY = {"max_error_rate": 0.2, "window_s": 30, "min_requests": 10}


def _ingress(doc: dict[str, Any]) -> dict[str, Any]:
    entry = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")
    live: dict[str, Any] = entry["user_config"]
    return live


def _versions(doc: dict[str, Any]) -> dict[str, Any]:
    versions: dict[str, Any] = doc["applications"][0]["args"]["models"]["minilm"]["versions"]
    return versions


class Operator:
    """Runs `servekit` commands on one config file against the session's instance."""

    def __init__(self, service: Service, path: Path, address: str) -> None:
        self.service, self.path, self.address = service, path, address
        self.env = {**os.environ, "SERVEKIT_URL": service.base_url, "RAY_USAGE_STATS_ENABLED": "0"}

    def edit(self, change: Any) -> None:
        """A hand edit of the file."""
        doc = yaml.safe_load(self.path.read_text())
        change(doc)
        self.path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def run(self, *args: str, where: tuple[str, ...] = ()) -> str:
        """One command; its output, after asserting it succeeded."""
        out = subprocess.run(
            [sys.executable, "-m", "servekit", *args, *where],
            capture_output=True, text=True, env=self.env, check=False, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def apply(self) -> str:
        return self.run("apply", str(self.path), "--address", self.address)

    def verb(self, *args: str) -> str:
        return self.run(*args, where=("--config", str(self.path), "--address", self.address))

    def status(self) -> str:
        return self.run("status", "--url", self.service.base_url, "--address", self.address,
                        "--config", str(self.path))  # fmt: skip

    def detail(self) -> dict[str, Any]:
        with self.service.client() as client:
            body: dict[str, Any] = client.get("/v1/models/minilm").json()
        return body

    def calls(self, n: int, stop: Any = None) -> Counter[tuple[int, str]]:
        """`n` embedding calls (fewer when `stop()` becomes true): (status, version)."""
        seen: Counter[tuple[int, str]] = Counter()
        with self.service.client() as client:
            for i in range(n):
                r = client.post("/v1/embeddings", json={"model": "minilm", "input": f"rb {i}"})
                seen[(r.status_code, r.headers.get("x-model-version", "-"))] += 1
                if stop is not None and i % 5 == 4 and stop():
                    break
        return seen


@pytest.fixture
def operator(service: Service, tmp_path: Path) -> Iterator[Operator]:
    """The service's config in a file; the service gets its config back afterwards."""
    import ray

    original = copy.deepcopy(service.config)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(service.config, sort_keys=False))
    try:
        yield Operator(service, path, ray.get_runtime_context().gcs_address)
    finally:
        service.redeploy(original)
        wait_ready(service)


def _weights(detail: dict[str, Any]) -> dict[str, int]:
    return {v["name"]: v["weight"] for v in detail["versions"] if v["weight"]}


def test_the_rollout_runbook_end_to_end(
    operator: Operator, manifest: dict[str, dict[str, str]], report: list[str]
) -> None:
    began = time.monotonic()
    steps: list[str] = []

    def step(name: str) -> None:
        steps.append(f"{name} {time.monotonic() - began:.0f} s")

    # 1. Add the version: the torch build, declared as v3 at weight 0 with its own
    # deployment (dedicated placement); a bad build, failing every call.
    def add_v3(doc: dict[str, Any]) -> None:
        _versions(doc)["v3"] = {
            "artifact": {"uri": "artifacts/minilm/v1-torch.tar",
                         "sha256": manifest["v1-torch"]["sha256"]},
            "runtime": "torch",
            "fault_injection": {"error_rate": 1.0},
        }  # fmt: skip
        _ingress(doc)["traffic"]["minilm"]["v3"] = 0
        doc["applications"][0]["deployments"].append(
            {"name": "minilm-v3", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}}
        )

    operator.edit(add_v3)
    assert "applied to" in operator.apply()
    assert "v3" in {v["name"] for v in operator.detail()["versions"]}
    step("added")

    # 2. Shadow it: callers never see its failures; they are counted.
    operator.edit(
        lambda d: _ingress(d).update(shadow={"minilm": {"version": "v3", "fraction": 1.0}})
    )
    operator.apply()
    assert {status for status, _ in operator.calls(12)} == {200}
    deadline = time.monotonic() + 20
    failed = 0
    while failed == 0 and time.monotonic() < deadline:
        pairs = (operator.detail().get("shadow") or {}).get("pairs", {})
        failed = sum(p.get("errors", 0) for pair, p in pairs.items() if pair.endswith("->v3"))
        time.sleep(0.5)
    assert failed > 0
    step("shadowed")

    # 3. Canary: the policy is added by hand, then promote. Its diff shows the policy
    # too, as it is deployed with the new weight.
    operator.edit(lambda d: _ingress(d).update(rollout={"minilm": {"canary": "v3", **POLICY}}))
    # Catalogs of other tests live on this instance, and a failing build never completes
    # its search index: the canary takes embeddings traffic while searches keep to v1.
    out = operator.verb("promote", "minilm", "v3", "--weight", "50", "--allow-incomplete-index")
    assert "already differed from the service; applying deploys that too" in out, out
    pending = out.split("applying deploys that too:", 1)[1]
    assert "+        canary: v3" in pending, out
    assert "applied to" in out
    assert _weights(operator.detail())["v3"] == 50
    operator.calls(60, stop=lambda: operator.detail()["rollout"]["state"] == "rolled_back")
    rollout = operator.detail()["rollout"]
    assert rollout["state"] == "rolled_back", rollout
    assert "canary v3 rolled_back" in operator.status()
    assert all(version != "v3" for _, version in operator.calls(10))
    step("rolled back")

    # An args change in the middle: the canary's build is fixed, every replica that
    # changes is replaced. The rollback is state: it stays.
    operator.edit(lambda d: _versions(d)["v3"].pop("fault_injection"))
    operator.apply()
    detail = operator.detail()
    assert detail["rollout"]["state"] == "rolled_back", detail["rollout"]
    assert "v3" not in _weights(detail)
    assert all(version != "v3" for _, version in operator.calls(10))
    step("fixed (args)")

    # The operator clears the rollback: the canary gets its weight back, watched afresh.
    assert "cleared the canary rollback of minilm" in operator.verb("rollout", "clear", "minilm")
    deadline = time.monotonic() + 10
    while operator.detail()["rollout"]["state"] != "watching" and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = operator.calls(20)
    assert {status for status, _ in seen} == {200}
    assert any(version == "v3" for _, version in seen)
    step("cleared")

    # 4. Widen: all traffic to v3; its watch and its shadow (and the empty rollout and
    # shadow blocks) go.
    out = operator.verb("promote", "minilm", "v3", "--weight", "100", "--allow-incomplete-index")
    assert "v3 now takes all traffic: its canary watch is removed" in out
    assert "v3 takes all traffic: the shadow mirroring 100% of its requests to it is removed" in out
    widened = _ingress(yaml.safe_load(operator.path.read_text()))
    assert "rollout" not in widened
    assert "shadow" not in widened
    assert not operator.detail().get("shadow")
    assert _weights(operator.detail()) == {"v3": 100}
    assert set(operator.calls(10)) == {(200, "v3")}
    status = operator.status()
    assert "differs" not in status
    assert "rollout:" not in status
    step("widened")
    report.append("rollout runbook: " + ", ".join(steps))
