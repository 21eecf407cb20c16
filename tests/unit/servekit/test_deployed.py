"""`servekit promote`/`rollback` show what an apply deploys beyond their own edit: the
file compared with the config Serve last deployed."""

from __future__ import annotations

import copy
from typing import Any

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
