"""Validate a whole `serve_config.yaml` without starting anything.

Every problem is reported with where it is, as a dotted path into the file:
`applications[0].deployments[Ingress].user_config.traffic.minilm: weights sum to 95,
expected 100`. Ray Serve's own schema is checked separately by `servekit validate`,
because this package does not import Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from configs.schema import (
    DIRECT_SCALING_POLICY,
    INGRESS_DEPLOYMENT,
    AppArgs,
    BatchLiveConfig,
    IngressLiveConfig,
)
from configs.settings import resolve_artifact_uri

IMPORT_PATH = "deployments.app:build_app"
# A validator's message that starts with the path it is about (`versions.v1.device: `,
# `placement: `), relative to the model that raised it.
_RELATIVE_PATH = re.compile(r"^[a-z_][a-z0-9_]*(?:\.[^\s:]+|\[\d+\])*: ")
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
    for name in args.shard_names():
        entry = by_name.get(name, {})
        report.problems.extend(_direct_scaling(args, entry, f"{where}.deployments[{name}]"))
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
        for name, batching in live.batching.items():
            problems.extend(
                _batch_unreachable(
                    entry, batching.max_batch_size, f"{where}.deployments[{INGRESS_DEPLOYMENT}]",
                    f"user_config.batching.{name}.max_batch_size",
                )
            )  # fmt: skip
    return live


def _batch_unreachable(entry: dict[str, Any], batch: int, where: str, field: str) -> list[str]:
    """A deployment's `max_ongoing_requests` below a batch size it serves: a replica holds
    at most that many requests, so a batch of `batch` could never fill (the README's
    "must stay above max_batch_size"). Only a value the file sets is compared (the code's
    defaults, 512 for the Ingress and 256 for a version, are above the default batch)."""
    ongoing = entry.get("max_ongoing_requests")
    if isinstance(ongoing, bool) or not isinstance(ongoing, int) or ongoing >= batch:
        return []
    return [
        f"{where}.max_ongoing_requests: {ongoing} is below {field} ({batch}): a replica "
        f"holds at most {ongoing} requests, so its batches could never fill; raise it to "
        f"at least {batch} (or lower the batch size)"
    ]


def _direct_scaling(args: AppArgs, entry: dict[str, Any], where: str) -> list[str]:
    """A dedicated version or catalog shard that autoscales while the ingress calls it
    directly must count those calls: Serve's default policy sees only what its handles
    route."""
    scaling = entry.get("autoscaling_config")
    if args.dedicated_calls != "direct" or not isinstance(scaling, dict):
        return []
    if scaling.get("policy") is not None:
        return []  # the operator's own policy (README: it sees servekit_direct_calls)
    return [
        f"{where}.autoscaling_config.policy: missing; the ingress calls this deployment "
        "directly, which Serve's default policy does not count: set "
        f"`policy: {{policy_function: {DIRECT_SCALING_POLICY}}}` (or args.dedicated_calls: handle)"
    ]


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
            problems.extend(
                _batch_unreachable(
                    entry, live.max_batch_size, f"{where}.deployments[{name}]",
                    "user_config.max_batch_size",
                )
            )  # fmt: skip
        problems.extend(_direct_scaling(args, entry, f"{where}.deployments[{name}]"))
        options = f"{where}.deployments[{name}].ray_actor_options"
        gpus = _num_gpus(entry.get("ray_actor_options"), options, problems)
        if gpus is not None and spec.device == "gpu" and not gpus > 0:
            problems.append(
                f"{options}.num_gpus: must be > 0 "
                f"because args.models.{model}.versions.{version}.device is gpu"
            )
        elif gpus is not None and spec.device == "cpu" and gpus > 0:
            # The other half of "one without the other": a replica that reserves a GPU
            # its CPU runtime never uses, and waits for one on a node without any.
            problems.append(
                f"{options}.num_gpus: must be 0 (or unset) because "
                f"args.models.{model}.versions.{version}.device is cpu; set device: gpu "
                "to run it on the GPU"
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
        problems.extend(_describe(base, e, model))
        return None


# Where a setting that is not servekit's `args` nor a live one belongs, told when it is
# written in the other place (`traffic` under `args`, `models` under a `user_config`):
# what restarts replicas and what is applied live are kept apart on purpose.
_LIVE_INGRESS = frozenset(IngressLiveConfig.model_fields)
_LIVE_BATCHING = frozenset(BatchLiveConfig.model_fields)
_ARGS = frozenset(AppArgs.model_fields)
_SERVE_DEPLOYMENT = frozenset(
    {"autoscaling_config", "num_replicas", "max_ongoing_requests", "max_queued_requests",
     "ray_actor_options", "graceful_shutdown_timeout_s", "health_check_period_s",
     "health_check_timeout_s", "user_config"}
)  # fmt: skip


def _misplaced(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    """Where an unknown field at `loc` of `model` belongs, when it is a setting of
    another part of the file ('' when it is none)."""
    field = str(loc[-1]) if loc else ""
    if model is AppArgs and len(loc) == 1 and field in _LIVE_INGRESS:
        return f"; {field} is a live setting: it belongs under deployments[Ingress].user_config"
    if model is AppArgs and loc[:1] == ("models",) and len(loc) == 5 and field in _LIVE_BATCHING:
        name = f"{loc[1]}-{loc[3]}"
        return (
            f"; {field} is a live setting: it belongs under deployments[Ingress].user_config."
            f"batching.{name} (inline) or deployments[{name}].user_config (dedicated)"
        )
    if model in (IngressLiveConfig, BatchLiveConfig) and len(loc) == 1:
        if field in _ARGS:
            return f"; {field} belongs under the application's args (changing it replaces replicas)"
        if field in _SERVE_DEPLOYMENT:
            return f"; {field} is a Serve deployment setting: beside user_config, not in it"
    return ""


def _describe(base: str, error: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """Turn pydantic errors into `path: message` lines that never echo input values."""
    lines = []
    for err in error.errors(include_input=False, include_url=False):
        path = base + "".join(f".{part}" for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown field{_misplaced(model, err['loc'])}")
        elif err["type"] == "missing":
            lines.append(f"{path}: missing required field")
        elif err["type"] == "value_error":
            message = str(err["msg"]).removeprefix("Value error, ")
            if not err["loc"] or _RELATIVE_PATH.match(message):
                # A model validator of ours names the path from where it sits
                # (`versions.v1.device: ...` of a model): one path, not two halves.
                lines.append(f"{path}.{message}")
            else:
                lines.append(f"{path}: {message}")
        else:
            lines.append(f"{path}: {err['msg']}")
    return lines
