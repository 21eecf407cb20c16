"""`servekit promote`/`rollback` show what an apply deploys beyond their own edit: the
file compared with the config Serve last deployed."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from servekit.deployed import deployed_apps, pending_diff
from tests.conftest import REPO_ROOT


def _file() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    return doc


def _details(app: dict[str, Any]) -> dict[str, Any]:
    """Serve's instance details as the controller answers them."""
    return {"applications": {app["name"]: {"status": "RUNNING", "deployed_app_config": app}}}


def test_a_file_that_is_deployed_has_nothing_pending() -> None:
    doc = _file()
    deployed = deployed_apps(_details(copy.deepcopy(doc["applications"][0])))
    assert pending_diff(deployed, doc, "serve_config.yaml") == ""


def test_a_hand_added_rollout_block_is_shown() -> None:
    doc = _file()
    deployed = deployed_apps(_details(copy.deepcopy(doc["applications"][0])))
    ingress = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress["user_config"]["rollout"] = {"minilm": {"canary": "v2", "max_error_rate": 0.02}}
    diff = pending_diff(deployed, doc, "serve_config.yaml")
    assert diff.startswith("--- deployed: servekit\n+++ serve_config.yaml: servekit\n")
    added = [line for line in diff.splitlines() if line.startswith("+ ")]
    assert added == [
        "+    rollout:",
        "+      minilm:",
        "+        canary: v2",
        "+        max_error_rate: 0.02",
    ]
    assert not [line for line in diff.splitlines() if line.startswith("- ")]


def test_an_application_not_deployed_yet_is_all_new() -> None:
    doc = _file()
    diff = pending_diff(deployed_apps({"applications": {}}), doc, "f.yaml")
    assert diff.startswith("--- deployed: servekit\n+++ f.yaml: servekit\n")
    assert "+import_path: deployments.app:build_app\n" in diff


def test_http_options_the_running_instance_keeps_are_named() -> None:
    """Serve applies `http_options` only when it starts: an apply says which it keeps."""
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import HTTPOptionsSchema

    from servekit.local import http_options_kept

    running = HTTPOptions(host="127.0.0.1", port=8000, request_timeout_s=60)
    same = HTTPOptionsSchema(host="127.0.0.1", port=8000, request_timeout_s=60)
    assert http_options_kept(running, same) == []
    moved = HTTPOptionsSchema(host="127.0.0.1", port=8001, request_timeout_s=60)
    assert http_options_kept(running, moved) == [
        "http_options.port: the file says 8001, the running instance keeps 8000 until it restarts"
    ]


# ---- a deployed version name keeps its model -----------------------------------------


def _version(app: dict[str, Any], model: str, version: str) -> dict[str, Any]:
    spec: dict[str, Any] = app["args"]["models"][model]["versions"][version]
    return spec


def test_a_file_that_is_deployed_changes_no_version() -> None:
    from servekit.deployed import changed_versions

    doc = _file()
    deployed = deployed_apps(_details(copy.deepcopy(doc["applications"][0])))
    assert changed_versions(deployed, doc) == []


def test_another_sha256_under_a_deployed_version_name_is_refused() -> None:
    """Deployed details carry another sha256 for minilm/v1 than the file: the file would
    put other bytes under a name whose catalog vectors and pins are the old model's."""
    from servekit.deployed import changed_versions

    doc = _file()
    running = copy.deepcopy(doc["applications"][0])
    _version(running, "minilm", "v1")["artifact"]["sha256"] = "f" * 64
    (line,) = changed_versions(deployed_apps(_details(running)), doc)
    assert line == (
        "applications[0].args.models.minilm.versions.v1: minilm/v1 is deployed, and the file "
        "changes its artifact.sha256 to 0a4936834d14... (deployed: ffffffffffff...). A "
        "deployed version is immutable (catalog indexes keep its vectors under its name, "
        "callers pin it by name): declare the new model under a new version name instead "
        "of v1, and roll that out"
    )


V2 = "applications[0].args.models.minilm.versions.v2"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda v, m: v["artifact"].update(uri="artifacts/minilm/v9.tar"),
         "artifact.uri to artifacts/minilm/v2.tar (deployed: artifacts/minilm/v9.tar)"),
        (lambda v, m: v.update(runtime="torch"), "runtime to onnx (deployed: torch)"),
        (lambda v, m: m.update(task="recommendation"),
         "model's task (models.minilm.task) to text-embedding (deployed: recommendation)"),
    ],
)  # fmt: skip
def test_uri_runtime_or_task_of_a_deployed_version_may_not_change(change: Any, said: str) -> None:
    from servekit.deployed import changed_versions

    doc = _file()
    running = copy.deepcopy(doc["applications"][0])
    model = running["args"]["models"]["minilm"]
    change(model["versions"]["v2"], model)
    lines = changed_versions(deployed_apps(_details(running)), doc)
    (v2,) = [line for line in lines if line.startswith(f"{V2}: minilm/v2 is deployed, ")]
    assert f"the file changes its {said}. A deployed version is immutable" in v2
    assert v2.endswith(
        "declare the new model under a new version name instead of v2, and roll that out"
    )


def test_what_a_version_name_does_not_stand_for_may_change() -> None:
    """Threads, lanes, placement, a fault injected for a rehearsal, a version added or
    retired, another application: nothing refused."""
    from servekit.deployed import changed_versions

    doc = _file()
    running = copy.deepcopy(doc["applications"][0])
    _version(running, "minilm", "v1")["busy_lanes"] = 1
    _version(running, "minilm", "v1")["fault_injection"] = {"error_rate": 1.0}
    running["args"]["models"]["minilm"]["placement"] = "dedicated"
    running["args"]["models"]["minilm"]["versions"]["v0"] = {
        "artifact": {"uri": "old.tar", "sha256": "e" * 64},
        "runtime": "torch",
    }  # retired since
    del running["args"]["models"]["minilm"]["versions"]["v2"]  # added since
    assert changed_versions(deployed_apps(_details(running)), doc) == []
    other = copy.deepcopy(doc["applications"][0])
    other["name"] = "staging"
    _version(other, "minilm", "v1")["artifact"]["sha256"] = "f" * 64
    assert changed_versions(deployed_apps(_details(other)), doc) == []
