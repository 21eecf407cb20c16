"""What SREs get queries what the service exports: every metric, label and label value
the alerts (cluster/monitoring/alerts.yaml), the Grafana dashboard and the README name
is in the exposition servekit's metrics module produces through Ray's exporter
(tests/unit/cluster/exposition.py); histogram quantiles keep `le`; rates are taken of
counters only; legends and alert annotations use labels their query keeps."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from tests.conftest import REPO_ROOT
from tests.unit.cluster.exposition import SERVE_TAGS, TARGET_LABELS, families, render

MONITORING = REPO_ROOT / "cluster" / "monitoring"
README = REPO_ROOT / "README.md"
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")
# Metrics of the scrape itself, not of servekit (checked by test_alerts.py).
SCRAPE_METRICS = frozenset({"up"})


@dataclass(frozen=True)
class Query:
    """One PromQL expression SREs get, where it is, and the labels its output must
    carry (a panel's legend, an alert's annotations)."""

    where: str
    expr: str
    shown: frozenset[str]


@cache
def exported() -> dict[str, tuple[str, list[dict[str, str]]]]:
    """Sample name -> (its family's type, the label sets exported)."""
    out: dict[str, tuple[str, list[dict[str, str]]]] = {}
    for family in families(render()).values():
        for name, labels in family.samples:
            out.setdefault(name, (family.kind, []))[1].append(labels)
    return out


def _base(name: str) -> str:
    """A histogram's name without its `_bucket`/`_sum`/`_count`."""
    for part in HISTOGRAM_PARTS:
        if name.endswith(part) and exported().get(name, ("", []))[0] == "histogram":
            return name.removesuffix(part)
    return name


def labels_of(name: str) -> set[str]:
    """Every label an exported series of `name` has, the scrape's target labels too."""
    return {k for labels in exported()[name][1] for k in labels} | set(TARGET_LABELS)


def values_of(name: str, label: str) -> set[str]:
    return {labels[label] for labels in exported()[name][1] if label in labels}


def _shown(template: str) -> frozenset[str]:
    return frozenset(re.findall(r"{{\s*(?:\$labels\.)?([a-zA-Z_]\w*)\s*}}", template))


def alerts() -> list[dict[str, Any]]:
    rule = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [alert for group in rule["spec"]["groups"] for alert in group["rules"]]


def queries() -> Iterator[Query]:
    for alert in alerts():
        text = " ".join(alert["annotations"].values())
        yield Query(f"alert {alert['alert']}", alert["expr"], _shown(text))
    dashboard: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query["query"])
            assert found, f"variable {variable['name']}: {query['query']}"
            where, (metric, label) = f"variable {variable['name']}", found.groups()
            yield Query(where, f"max by ({label}) ({metric})", frozenset({label}))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$model", ".*")
            legend = target.get("legendFormat", "")
            yield Query(f"panel {panel['title']!r}", expr, _shown(legend))


SELECTOR = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"})


def selectors(expr: str) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, op, value)]) of every series selector in `expr`."""
    bare = GROUPING.sub(" ", re.sub(r"\[[^\]]*\]", " ", expr))
    # Strings outside a selector's braces are arguments (label_join's), not metrics.
    bare = re.sub(r'\{[^}]*\}|"[^"]*"', lambda m: m[0] if m[0][0] == "{" else '""', bare)
    for name, braces in SELECTOR.findall(bare):
        if name not in KEYWORDS:
            yield name, MATCHER.findall(braces)


def _value_problem(name: str, label: str, op: str, value: str) -> str | None:
    """Why an `=`/`=~` matcher selects nothing servekit exports (None: it selects some)."""
    if op not in ("=", "=~"):
        return None  # a negative matcher always selects what the rest selects
    known = values_of(name, label)
    if op == "=" or re.fullmatch(r"[\w-]+(\|[\w-]+)*", value):
        missing = set(value.split("|") if op == "=~" else [value]) - known
        return f"{label} {sorted(missing)} not among {sorted(known)}" if missing else None
    if not any(re.fullmatch(value, v) for v in known):
        return f'{label}=~"{value}" matches none of {sorted(known)}'
    return None


def problems(query: Query) -> Iterator[str]:
    """What in `query` does not fit what servekit exports."""
    names = []
    for name, matchers in selectors(query.expr):
        if name in SCRAPE_METRICS:
            continue
        if name not in exported():
            yield f"{name} is not exported (exported: {sorted(exported())})"
            continue
        names.append(name)
        for label, op, value in matchers:
            if label not in labels_of(name):
                yield f"{name} has no label {label!r} (it has {sorted(labels_of(name))})"
            elif problem := _value_problem(name, label, op, value):
                yield f"{name}: {problem}"
    available = set(TARGET_LABELS).union(*(labels_of(n) for n in names))
    for clause in GROUPING.findall(query.expr):
        for label in filter(None, (s.strip() for s in clause.split(","))):
            if label not in available:
                yield f"groups by {label!r}, which none of {names} has"
    yield from _rate_problems(query.expr)
    yield from _quantile_problems(query.expr)
    kept = _output_labels(query.expr, names)
    if missing := query.shown - kept:
        yield f"shows {sorted(missing)}, which the query's result lacks (it keeps {sorted(kept)})"


def _rate_problems(expr: str) -> Iterator[str]:
    for fn, name in re.findall(r"\b(rate|irate|increase)\(\s*(ray_\w+)", expr):
        kind = exported().get(name, ("", []))[0]
        if kind not in ("counter", "histogram"):
            yield f"{fn}() of {name}, a {kind or 'missing'} series, not a counter"


def _quantile_problems(expr: str) -> Iterator[str]:
    quantiles = re.findall(
        r"histogram_quantile\(\s*[\d.]+\s*,\s*sum by \(([^)]*)\)\s*\(rate\((ray_\w+)", expr
    )
    if len(quantiles) != expr.count("histogram_quantile("):
        yield "a histogram_quantile() not of `sum by (le, ...) (rate(..._bucket))`"
    for by, name in quantiles:
        if not name.endswith("_bucket"):
            yield f"histogram_quantile() of {name}, not of a _bucket series"
        if "le" not in {s.strip() for s in by.split(",")}:
            yield f"histogram_quantile() of {name} sums away `le`"
    for name in re.findall(r"\b(ray_\w+_bucket)\b", expr):
        if not any(name == n for _, n in quantiles):
            yield f"{name} outside histogram_quantile()"


def _output_labels(expr: str, names: list[str]) -> set[str]:
    """The labels the result of `expr` keeps: its first aggregation's (less `le`), an
    absent()'s matchers, or else every label of the series it selects."""
    if expr.lstrip().startswith("absent("):
        return {label for _, ms in selectors(expr) for label, op, _ in ms if op == "="}
    grouped = re.search(r"\bby\s*\(([^)]*)\)", expr)
    if grouped:
        return {s.strip() for s in grouped.group(1).split(",")} - {"", "le"}
    return set(TARGET_LABELS).union(*(labels_of(n) for n in names))


def test_the_exposition_has_every_metric_the_module_defines() -> None:
    """The check below is only as good as the exposition it compares with."""
    from deployments.observability.metrics import CATALOGUE

    bases = {_base(n).removeprefix("ray_") for n in exported()}
    assert bases == set(CATALOGUE)


def test_every_query_selects_what_servekit_exports() -> None:
    found = {f"{q.where}: {p}" for q in queries() for p in problems(q)}
    assert found == set()


def test_the_checks_catch_what_drifts() -> None:
    """A query of a name without Ray's prefix, of a label or value the service never
    exports, a quantile that sums `le` away, a rate of a gauge, a legend of a label
    summed away: each is found."""
    wrong = {
        "servekit_requests_total": "sum(rate(servekit_requests_total[5m]))",
        "label": 'sum(rate(ray_servekit_requests_total{status="500"}[5m]))',
        "value": 'sum(rate(ray_servekit_dropped_requests_total{reason="timeout"}[5m]))',
        "le": "histogram_quantile(0.9, sum by (model) (rate("
        "ray_servekit_request_duration_seconds_bucket[5m])))",
        "gauge": "sum(rate(ray_servekit_replicas[5m]))",
        "group": "sum by (tenant) (rate(ray_servekit_requests_total[5m]))",
    }
    for what, expr in wrong.items():
        assert list(problems(Query(what, expr, frozenset()))), what
    legend = Query("legend", "sum by (model) (ray_servekit_replicas)", frozenset({"version"}))
    assert list(problems(legend))


def _readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_names_only_exported_metrics_and_labels() -> None:
    """Every servekit metric the README (or an alert's description) names, with the
    labels and values it gives in braces."""
    notes = [text for alert in alerts() for text in alert["annotations"].values()]
    found = set()
    for text in (README.read_text(), *notes):
        for name, braces in re.findall(r"\b((?:ray_)?servekit_[a-z0-9_]+)(\{[^}]*\})?", text):
            if not name.startswith("ray_") and not name.endswith(("_total", "_seconds")):
                continue  # servekit_client, servekit_stack: not metrics
            full = name if name.startswith("ray_") else f"ray_{name}"
            if full not in exported() and f"{full}_count" not in exported():
                found.add(f"{name} is not exported")
                continue
            sample = full if full in exported() else f"{full}_count"
            for part in braces.strip("{}").split(","):
                label, _, value = part.strip().partition("=")
                if label and label not in labels_of(sample):
                    found.add(f"{name} has no label {label!r}")
                for one in filter(None, value.strip('"').split("|")):
                    if one not in values_of(sample, label):
                        found.add(f"{name}: {label} is never {one!r}")
    assert found == set()


def test_the_readme_metrics_table_lists_each_metric_with_its_type_and_labels() -> None:
    rows = re.findall(
        r"^\| `(ray_servekit_\w+)` \| (\w+)[^|]*\| ([^|]*) \|$",
        _readme_section("## Metrics and logs"),
        re.MULTILINE,
    )
    assert {name for name, _, _ in rows} == {_base(n) for n in exported()}
    for name, kind, labels in rows:
        sample = name if name in exported() else f"{name}_count"
        assert exported()[sample][0] == kind, name
        named = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", labels)))
        ours = {k for k in labels_of(sample) if not k.startswith("otel_scope_")}
        assert named == ours - TARGET_LABELS - set(SERVE_TAGS), name


def test_the_readme_names_only_panels_and_alerts_that_exist() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    named = set(re.findall(r'"([^"]+)" panel', README.read_text()))
    assert named <= titles
    table = re.findall(r"^\| `(Servekit\w+)` \|", README.read_text(), re.MULTILINE)
    assert sorted(table) == sorted(alert["alert"] for alert in alerts())
