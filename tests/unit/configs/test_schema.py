"""Test-only settings are refused outside tests: `fault_injection` needs
SERVEKIT_ALLOW_FAULT_INJECTION=1 in the serving processes' environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from configs.schema import FAULT_INJECTION_ENV, AppArgs, FaultInjection, VersionSpec
from configs.validate import validate_file

# Configs valid in tests and refused elsewhere; first line: `# expect: <message prefix>`.
REFUSED = sorted((Path(__file__).parent / "refused_outside_tests").glob("*.yaml"))

SPEC: dict[str, Any] = {
    "artifact": {"uri": "artifacts/minilm/v1.tar", "sha256": "0" * 64},
    "runtime": "onnx",
    "fault_injection": {"error_rate": 0.5, "extra_latency_ms": 10},
}


@pytest.mark.parametrize("value", [None, "0", "true", "yes", " 1"])
def test_fault_injection_is_refused_without_the_env_setting(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(FAULT_INJECTION_ENV, raising=False)
    else:
        monkeypatch.setenv(FAULT_INJECTION_ENV, value)
    with pytest.raises(ValidationError) as caught:
        VersionSpec.model_validate(SPEC)
    (error,) = caught.value.errors(include_input=False)
    assert error["loc"] == ("fault_injection",)
    assert "test-only setting" in error["msg"]
    assert "SERVEKIT_ALLOW_FAULT_INJECTION=1" in error["msg"]


def test_fault_injection_is_accepted_with_the_env_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_INJECTION_ENV, "1")
    spec = VersionSpec.model_validate(SPEC)
    assert spec.fault_injection == FaultInjection(error_rate=0.5, extra_latency_ms=10)


def test_a_version_without_fault_injection_needs_no_env_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(FAULT_INJECTION_ENV, raising=False)
    spec = VersionSpec.model_validate({k: v for k, v in SPEC.items() if k != "fault_injection"})
    assert spec.fault_injection is None


@pytest.mark.parametrize("path", REFUSED, ids=[p.stem for p in REFUSED])
def test_refused_outside_tests_config_message(
    path: Path, monkeypatch: pytest.MonkeyPatch, example_store: Path
) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    monkeypatch.delenv(FAULT_INJECTION_ENV, raising=False)
    report = validate_file(path)
    assert not report.ok
    assert any(p.startswith(first.removeprefix("# expect: ")) for p in report.problems), (
        report.problems
    )
    monkeypatch.setenv(FAULT_INJECTION_ENV, "1")  # as the test configs run
    assert validate_file(path).problems == []


def test_a_recommender_needs_what_it_reads() -> None:
    embed = {"artifact": {"uri": "a", "sha256": "0" * 64}, "runtime": "onnx"}
    rec = {"task": "recommendation", "placement": "inline", "versions": {"v1": embed}}
    args = {"models": {"m": {"versions": {"v1": embed}}, "r": rec}}
    ok = AppArgs.model_validate(args)
    assert ok.recommender() == "r"
    assert ok.search_model() == "m"
    assert ok.inline_versions() == []  # the recommender's versions load elsewhere
    cases = [
        ({**args, "search": {"shards": 2}}, "recommendations need search.shards: 1"),
        ({**args, "search": {"enabled": False}}, "recommendations need search.enabled"),
        ({**args, "features": {"enabled": False}}, "recommendations need features.enabled"),
        ({"models": {"r": rec}}, "a recommender needs a text-embedding model beside it"),
        ({**args, "search": {"model": "r"}}, "search.model: 'r' is a recommender"),
        ({"models": {**args["models"], "r2": rec}}, "one recommender at most"),  # type: ignore[dict-item]
        ({"models": {"m": args["models"]["m"], "r": {**rec, "placement": "dedicated"}}},
         "a recommender runs inline"),
    ]  # fmt: skip
    for doc, message in cases:
        with pytest.raises(ValidationError, match=message):
            AppArgs.model_validate(doc)


def test_a_recommender_needs_the_feature_views_it_reads(tmp_path: Path) -> None:
    """Definitions without `item_popularity` made every recommendation a 500 (a KeyError
    in the ranker's read); they are refused when the config is validated, naming what
    is missing. Without a recommender they are fine."""
    import yaml

    from configs.features import DEFAULT_DEFINITIONS

    doc = yaml.safe_load(DEFAULT_DEFINITIONS.read_text())
    del doc["feature_views"]["item_popularity"]
    doc["feature_views"]["user_activity"]["features"]["recent_items"]["kind"] = "count"
    del doc["feature_views"]["user_activity"]["features"]["recent_items"]["max_items"]
    custom = tmp_path / "features.yaml"
    custom.write_text(yaml.safe_dump(doc))
    embed = {"artifact": {"uri": "a", "sha256": "0" * 64}, "runtime": "onnx"}
    rec = {"task": "recommendation", "placement": "inline", "versions": {"v1": embed}}
    args = {"models": {"m": {"versions": {"v1": embed}}, "r": rec},
            "features": {"definitions": str(custom)}}  # fmt: skip
    with pytest.raises(ValidationError) as caught:
        AppArgs.model_validate(args)
    message = str(caught.value)
    assert "features.definitions: the recommender models.r reads" in message
    assert "feature view item_popularity (entity item)" in message
    assert "feature_views.user_activity.features.recent_items (kind recent_items)" in message
    AppArgs.model_validate({**args, "models": {"m": args["models"]["m"]}})  # type: ignore[index]


def test_a_canary_min_requests_is_capped_at_what_its_window_holds() -> None:
    """The window keeps the latest calls only: a policy waiting for more than it holds
    would never judge its canary, so it is refused, saying why."""
    from configs.schema import CANARY_WINDOW_MAX_CALLS, RolloutPolicy
    from deployments.routing.rollout import CallWindow

    assert CallWindow(60)._calls.maxlen == CANARY_WINDOW_MAX_CALLS
    assert RolloutPolicy(canary="v2", min_requests=CANARY_WINDOW_MAX_CALLS).min_requests == 20_000
    with pytest.raises(ValidationError, match="at most 20000: the canary window keeps the latest"):
        RolloutPolicy(canary="v2", min_requests=CANARY_WINDOW_MAX_CALLS + 1)
