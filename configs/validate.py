"""Validate a whole `serve_config.yaml` without starting anything.

Every problem is reported with where it is, as a dotted path into the file:
`applications[0].deployments[Ingress].user_config.traffic.minilm: weights sum to 95,
expected 100`. Ray Serve's own schema is checked separately by `servekit validate`,
because this package does not import Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from configs.schema import (
    INGRESS_DEPLOYMENT,
    AppArgs,
    BatchLiveConfig,
    IngressLiveConfig,
)
from configs.settings import resolve_artifact_uri

IMPORT_PATH = "deployments.app:build_app"
M = TypeVar("M", bound=BaseModel)


@dataclass
class ServekitApp:
    """The validated servekit parts of one application of the file."""

    name: str
    args: AppArgs
    ingress: IngressLiveConfig
    batching: dict[str, BatchLiveConfig] = field(default_factory=dict)


@dataclass
class ValidationReport:
    """The result of validating a file: the apps when valid, the problems otherwise."""

    apps: list[ServekitApp] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the file is valid."""
        return not self.problems


def validate_file(path: Path, check_artifacts: bool = True) -> ValidationReport:
    """Validate a config file; see `validate_document`."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return ValidationReport(problems=[f"{path}: no such file"])
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        return ValidationReport(problems=[f"{where}: not valid YAML"])
    return validate_document(doc, check_artifacts=check_artifacts)


def validate_document(doc: Any, check_artifacts: bool = True) -> ValidationReport:
    """Validate a parsed Serve config: every servekit application's args and live configs."""
    report = ValidationReport()
    if not isinstance(doc, dict) or not isinstance(doc.get("applications"), list):
        report.problems.append("applications: missing; expected a list of Serve applications")
        return report
    for index, app in enumerate(doc["applications"]):
        where = f"applications[{index}]"
        if not isinstance(app, dict):
            report.problems.append(f"{where}: expected a mapping")
        elif app.get("import_path") == IMPORT_PATH:
            _validate_app(app, where, report, check_artifacts)
    if not report.apps and not report.problems:
        report.problems.append(f"applications: none has import_path {IMPORT_PATH!r}")
    return report


def _validate_app(
    app: dict[str, Any], where: str, report: ValidationReport, check_artifacts: bool
) -> None:
    args = _parse(AppArgs, app.get("args"), f"{where}.args", report.problems)
    deployments = app.get("deployments") or []
    if not isinstance(deployments, list):
        report.problems.append(f"{where}.deployments: expected a list")
        return
    by_name: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(deployments):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            report.problems.append(f"{where}.deployments[{i}]: expected a mapping with a name")
            continue
        if entry["name"] in by_name:
            report.problems.append(f"{where}.deployments[{entry['name']}]: listed twice")
        by_name[entry["name"]] = entry
    if args is None:
        return
    known = [*args.deployment_names(), *args.shard_names()]
    for name in by_name:
        if name != INGRESS_DEPLOYMENT and name not in known:
            choices = ", ".join([INGRESS_DEPLOYMENT, *sorted(known)])
            report.problems.append(
                f"{where}.deployments[{name}]: no such deployment (known: {choices})"
            )
    ingress = _validate_ingress(by_name.get(INGRESS_DEPLOYMENT), args, where, report.problems)
    batching = _validate_versions(args, by_name, where, report.problems, check_artifacts)
    if ingress is not None and not report.problems:
        report.apps.append(ServekitApp(str(app.get("name", "")), args, ingress, batching))


def _validate_ingress(
    entry: dict[str, Any] | None, args: AppArgs, where: str, problems: list[str]
) -> IngressLiveConfig | None:
    base = f"{where}.deployments[{INGRESS_DEPLOYMENT}].user_config"
    if entry is None or entry.get("user_config") is None:
        problems.append(f"{base}: missing; it holds the traffic weights of every model")
        return None
    live = _parse(IngressLiveConfig, entry["user_config"], base, problems)
    if live is not None:
        problems.extend(f"{base}.{p}" for p in live.check_against(args))
    return live


def _validate_versions(
    args: AppArgs,
    by_name: dict[str, dict[str, Any]],
    where: str,
    problems: list[str],
    check_artifacts: bool,
) -> dict[str, BatchLiveConfig]:
    batching: dict[str, BatchLiveConfig] = {}
    for name, (model, version) in args.deployment_names().items():
        spec = args.models[model].versions[version]
        entry = by_name.get(name, {})
        live = _parse(
            BatchLiveConfig,
            entry.get("user_config") or {},
            f"{where}.deployments[{name}].user_config",
            problems,
        )
        if live is not None:
            batching[name] = live
        options = f"{where}.deployments[{name}].ray_actor_options"
        gpus = _num_gpus(entry.get("ray_actor_options"), options, problems)
        if gpus is not None and spec.device == "gpu" and not gpus > 0:
            problems.append(
                f"{options}.num_gpus: must be > 0 "
                f"because args.models.{model}.versions.{version}.device is gpu"
            )
    if not check_artifacts:
        return batching
    for model, model_spec in args.models.items():
        for version, spec in model_spec.versions.items():
            uri = resolve_artifact_uri(spec.artifact.uri, args.artifact_root)
            if not uri.startswith("s3://") and not Path(uri).is_file():
                problems.append(
                    f"{where}.args.models.{model}.versions.{version}.artifact.uri: "
                    f"missing artifact, no file at {uri}"
                )
    for n, snap in enumerate(args.search.snapshots):
        uri = resolve_artifact_uri(snap.artifact.uri, args.artifact_root)
        if not uri.startswith("s3://") and not Path(uri).is_file():
            problems.append(
                f"{where}.args.search.snapshots[{n}].artifact.uri: "
                f"missing artifact, no file at {uri} (servekit index build makes one)"
            )
    return batching


def _num_gpus(options: Any, where: str, problems: list[str]) -> float | None:
    """`num_gpus` of a deployment's `ray_actor_options` (0 when unset); None, with a
    problem, when it is not a number (Ray would take "1", the comparison would not)."""
    if options is None:
        return 0.0
    if not isinstance(options, dict):
        problems.append(f"{where}: expected a mapping")
        return None
    gpus = options.get("num_gpus")
    if gpus is None:
        return 0.0
    if isinstance(gpus, bool) or not isinstance(gpus, int | float):
        problems.append(f"{where}.num_gpus: expected a number, for example 1 (not quoted)")
        return None
    return float(gpus)


def _parse(model: type[M], data: Any, base: str, problems: list[str]) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems.extend(_describe(base, e))
        return None


def _describe(base: str, error: ValidationError) -> list[str]:
    """Turn pydantic errors into `path: message` lines that never echo input values."""
    lines = []
    for err in error.errors(include_input=False, include_url=False):
        path = base + "".join(f".{part}" for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown field")
        elif err["type"] == "missing":
            lines.append(f"{path}: missing required field")
        elif err["type"] == "value_error" and not err["loc"]:
            # Our own model validators already name the relative path.
            lines.append(f"{base}.{str(err['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"{path}: {err['msg']}")
    return lines
