"""The dedicated versions' autoscaling policy counts the calls its handles route and the
direct calls its replicas hold, by Serve's own rule; and the config must name it."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

from configs.schema import DIRECT_SCALING_POLICY
from configs.validate import validate_document
from deployments.replicas.direct_scaling import DIRECT_CALLS_METRIC, policy
from tests.conftest import REPO_ROOT


def _context(replicas: int, routed: float, direct: dict[str, float] | None) -> Any:
    config = AutoscalingConfig(min_replicas=1, max_replicas=10, target_ongoing_requests=2)
    metrics = {DIRECT_CALLS_METRIC: direct} if direct is not None else {}
    return SimpleNamespace(
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        total_num_requests=routed,
        aggregated_metrics=metrics,
        config=config,
    )


def test_direct_calls_count_as_serve_counts_routed_requests() -> None:
    # Two replicas, target 2 each: 8 requests in all want 4 replicas, however they came.
    assert policy(_context(2, 8, None))[0] == 4
    assert policy(_context(2, 0, {"r1": 5.0, "r2": 3.0}))[0] == 4
    assert policy(_context(2, 2, {"r1": 3.0, "r2": 3.0}))[0] == 4
    assert policy(_context(2, 0, {"r1": 0.0, "r2": 0.0}))[0] == 0
    # Without direct calls it is Serve's default policy, figure for figure.
    for replicas, routed in ((1, 0), (1, 7), (3, 2.5), (4, 40)):
        ctx = _context(replicas, routed, None)
        assert policy(ctx)[0] == replica_queue_length_autoscaling_policy(ctx)[0]


def test_no_replica_keeps_the_target() -> None:
    assert policy(_context(0, 0, None)) == (0, {})


def test_the_policy_path_is_what_serve_loads() -> None:
    loaded = AutoscalingPolicy(policy_function=DIRECT_SCALING_POLICY).get_policy()
    assert loaded(_context(2, 0, {"r1": 5.0, "r2": 3.0}))[0] == 4


@pytest.fixture
def dedicated_doc() -> dict[str, Any]:
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    app = doc["applications"][0]
    app["args"]["models"]["minilm"]["placement"] = "dedicated"
    batching = app["deployments"][0]["user_config"].pop("batching")
    for version in app["args"]["models"]["minilm"]["versions"]:
        app["deployments"].append(
            {
                "name": f"minilm-{version}",
                "user_config": batching.get(f"minilm-{version}", {}),
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
            }
        )
    return dict(doc)


def test_a_dedicated_version_that_autoscales_names_the_policy(
    dedicated_doc: dict[str, Any],
) -> None:
    problems = validate_document(dedicated_doc, check_artifacts=False).problems
    assert len(problems) == 2
    assert all(".autoscaling_config.policy: missing" in p for p in problems)
    with_policy = copy.deepcopy(dedicated_doc)
    for entry in with_policy["applications"][0]["deployments"][1:]:
        entry["autoscaling_config"]["policy"] = {"policy_function": DIRECT_SCALING_POLICY}
    assert validate_document(with_policy, check_artifacts=False).problems == []
    # Through the handle only, Serve's default counts every call.
    handle_only = copy.deepcopy(dedicated_doc)
    handle_only["applications"][0]["args"]["dedicated_calls"] = "handle"
    assert validate_document(handle_only, check_artifacts=False).problems == []
    # An operator's own policy is theirs to make count the direct calls.
    own = copy.deepcopy(dedicated_doc)
    for entry in own["applications"][0]["deployments"][1:]:
        entry["autoscaling_config"]["policy"] = {
            "policy_function": "ray.serve.autoscaling_policy:default_autoscaling_policy"
        }
    assert validate_document(own, check_artifacts=False).problems == []


def test_a_catalog_shard_that_autoscales_names_the_policy() -> None:
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    app = doc["applications"][0]
    app["args"]["search"] = {"shards": 2}
    app["args"]["models"].pop("recommender")  # recommendations keep to one index
    live = app["deployments"][0]["user_config"]
    live["traffic"].pop("recommender")
    live.get("batching", {}).pop("recommender-v1", None)
    app["deployments"].append(
        {"name": "CatalogShard-1", "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}
    )
    problems = validate_document(doc, check_artifacts=False).problems
    assert problems == [
        "applications[0].deployments[CatalogShard-1].autoscaling_config.policy: missing; the "
        "ingress calls this deployment directly, which Serve's default policy does not count: "
        f"set `policy: {{policy_function: {DIRECT_SCALING_POLICY}}}` "
        "(or args.dedicated_calls: handle)"
    ]
    app["deployments"][-1]["autoscaling_config"]["policy"] = {
        "policy_function": DIRECT_SCALING_POLICY
    }
    assert validate_document(doc, check_artifacts=False).problems == []
