"""The Grafana dashboard (cluster/monitoring/grafana-dashboard.json): its panels'
queries, evaluated by promtool (`promql_expr_test`) on series as Ray exports them, plot
what their titles say."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.unit.cluster.exposition import render

DASHBOARD = REPO_ROOT / "cluster" / "monitoring" / "grafana-dashboard.json"


def panels() -> list[dict[str, Any]]:
    """Every panel of the dashboard."""
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    found: list[dict[str, Any]] = doc["panels"]
    return found


def panel_exprs(title: str) -> list[str]:
    """The queries of the panel with this title, `$model` meaning every model."""
    [panel] = [p for p in panels() if p["title"] == title]
    return [t["expr"].replace("$model", ".*") for t in panel["targets"]]


def evaluate(tmp_path: Path, series: dict[str, str], checks: list[dict[str, Any]]) -> None:
    """Run promtool's expression tests: `series` (selector -> values, one a minute),
    `checks` as promql_expr_test entries."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: run scripts/install-servers.sh (as root)")
    (tmp_path / "rules.yaml").write_text("groups: []\n")
    case = {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "promql_expr_test": checks,
    }
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [case]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [exe, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rollbacks_panel_counts_a_rollback_that_starts_its_series(tmp_path: Path) -> None:
    """Ray exports a counter from its first increment on: a canary version's first
    rollback is a new series with the value 1, which increase() alone never sees."""
    [expr] = panel_exprs("Automatic rollbacks")
    series = {
        # minilm/v3 rolled back at 80 minutes, on a replica that had never counted one.
        'ray_servekit_rollbacks_total{model="minilm",version="v3",replica="a"}': "_x80 1x60",
        # e5/v2: once long ago on replica b, again at 90 minutes.
        'ray_servekit_rollbacks_total{model="e5",version="v2",replica="b"}': "1x89 2x50",
        # e5/v3: once long ago, nothing in the last hour.
        'ray_servekit_rollbacks_total{model="e5",version="v3",replica="b"}': "1x140",
        # Prometheus started at 0: every series is new to it for an hour.
        'up{job="servekit-ray",pod="servekit-raycluster-head"}': "1x140",
    }
    checks = [
        {"expr": expr, "eval_time": "30m", "exp_samples": [
            {"labels": '{model="e5",version="v2"}', "value": 0},
            {"labels": '{model="e5",version="v3"}', "value": 0},
        ]},
        {"expr": expr, "eval_time": "79m", "exp_samples": [
            {"labels": '{model="e5",version="v2"}', "value": 0},
            {"labels": '{model="e5",version="v3"}', "value": 0},
        ]},
        {"expr": expr, "eval_time": "100m", "exp_samples": [
            {"labels": '{model="minilm",version="v3"}', "value": 1},
            {"labels": '{model="e5",version="v2"}', "value": 1},
            {"labels": '{model="e5",version="v3"}', "value": 0},
        ]},
    ]  # fmt: skip
    evaluate(tmp_path, series, checks)


def test_each_panel_describes_itself() -> None:
    """A description copied from another panel tells the reader about the wrong plot."""
    seen: dict[str, str] = {}
    for panel in panels():
        text = panel["description"]
        assert text not in seen, f"{panel['title']!r} has {seen[text]!r}'s description"
        seen[text] = panel["title"]


def _per_minute(record: Callable[[], None], metric: str, model: str) -> dict[str, str]:
    """promtool series of `metric`'s `_sum` and `_count` for `model`, as Ray's agent
    exports them after `record`, growing by that much every minute."""
    from prometheus_client.parser import text_string_to_metric_families

    series = {}
    for family in text_string_to_metric_families(render(record)):
        for sample in family.samples:
            ours = sample.labels.get("model") == model
            if ours and sample.name in (f"{metric}_sum", f"{metric}_count"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                series[f"{sample.name}{{{labels}}}"] = f"0+{sample.value}x20"
    assert len(series) == 2, series
    return series


def test_mean_batch_size_and_inputs_per_request_are_whole_inputs(tmp_path: Path) -> None:
    """Ray's agent rebuilds a histogram's sum from its buckets' midpoints: a batch of
    one input counts 0.5, of two 1.5. Model calls of 1 and 2 inputs alike, requests of
    1 and 2 texts alike: the panels say 1.5."""
    from deployments.observability import metrics

    def batches() -> None:
        model = metrics.ModelMetrics("mean-check", "v1")
        for inputs in (1, 2) * 10:
            model.observe_batch(inputs, 0.01)

    def requests() -> None:
        ingress = metrics.IngressMetrics()
        for inputs in (1, 2) * 10:
            ingress.observe("mean-check", "v1", "/v1/embeddings", 200, 0.01, inputs)

    cases = [
        ("Mean batch size (inputs per model call)", batches, "ray_servekit_batch_size"),
        ("Inputs per request", requests, "ray_servekit_inputs_per_request"),
    ]
    for title, record, metric in cases:
        [expr] = panel_exprs(title)
        check = {
            "expr": expr,
            "eval_time": "10m",
            "exp_samples": [{"labels": '{model="mean-check",version="v1"}', "value": 1.5}],
        }
        evaluate(tmp_path, _per_minute(record, metric, "mean-check"), [check])
