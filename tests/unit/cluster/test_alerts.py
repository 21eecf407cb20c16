"""The alert rules (cluster/monitoring/alerts.yaml): valid for Prometheus (`promtool
check rules`), each alert firing on the series that mean trouble and quiet on healthy
ones (`promtool test rules`, tests/unit/cluster/alerts_test.yaml), on metrics servekit
exports, under the job name the PodMonitor gives them. promtool comes from Debian's
`prometheus` package (scripts/install-servers.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.observability.metrics import CATALOGUE
from tests.conftest import REPO_ROOT

MONITORING = REPO_ROOT / "cluster" / "monitoring"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")


def _rule() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return doc


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _rule()["spec"]["groups"] for rule in group["rules"]]


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: run scripts/install-servers.sh (as root)")
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_are_valid_for_prometheus(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": _rule()["spec"]["groups"]}))
    done = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in done.stdout


def test_each_alert_fires_on_trouble_and_stays_quiet_otherwise(tmp_path: Path) -> None:
    """The annotations' templates are checked above; the unit tests compare labels."""

    def bare(rule: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in rule.items() if k != "annotations"}

    groups = [
        {**group, "rules": [bare(r) for r in group["rules"]]} for group in _rule()["spec"]["groups"]
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    done = _promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_case_that_fires() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {
        check["alertname"]
        for case in cases
        for check in case["alert_rule_test"]
        if check.get("exp_alerts")
    }
    assert {a["alert"] for a in _alerts()} == fired


def test_alerts_query_metrics_servekit_exports_and_say_what_to_do() -> None:
    for alert in _alerts():
        names = {
            re.sub(r"_(bucket|sum|count)$", "", m)
            for m in re.findall(r"\bray_(servekit_[a-z_]+)", alert["expr"])
        }
        unknown = names - set(CATALOGUE)
        assert unknown == set(), f"{alert['alert']} queries undefined {unknown}"
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["annotations"]["summary"]
        assert alert["annotations"]["description"]


def test_the_job_the_alerts_watch_is_the_one_the_podmonitor_names() -> None:
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    [job] = [r["replacement"] for r in relabel if r.get("targetLabel") == "job"]
    watched = {m for a in _alerts() for m in re.findall(r'\bup\{job="([^"]+)"\}', a["expr"])}
    assert watched == {job}
    rule = _rule()
    assert rule["metadata"]["namespace"] == monitor["metadata"]["namespace"]
