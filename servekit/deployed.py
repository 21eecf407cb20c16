"""What Serve runs, as the config it was last given, and how a file differs from it.

`servekit promote` and `rollback` show the diff of the file they edit; an apply deploys
the whole file, though, and the file may already differ from what runs (a hand edit,
an earlier `--no-apply`). These find that difference, so it is shown too, and the one
difference no apply may make: a version name that runs already, given other bytes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import yaml

# Fetches Serve's instance details (`GET /api/serve/applications/` or, as a driver,
# the controller's): {"applications": {name: {"deployed_app_config": {...}}}}.
DetailsFetcher = Callable[[], dict[str, Any]]


def deployed_apps(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each application's config as Serve last deployed it, by name (those Serve
    holds one for: an application deployed from a config)."""
    out = {}
    for name, app in (details.get("applications") or {}).items():
        config = (app or {}).get("deployed_app_config")
        if config:
            out[name] = dict(config)
    return out


def _lines(app: dict[str, Any]) -> list[str]:
    """An application's config as sorted YAML lines, through Serve's schema, so that
    the file's and the controller's copies compare equal when they say the same."""
    from ray.serve.schema import ServeApplicationSchema

    dumped = ServeApplicationSchema.model_validate(app).model_dump(exclude_unset=True, mode="json")
    text: str = yaml.safe_dump(dumped, sort_keys=True, default_flow_style=False)
    return text.splitlines(keepends=True)


def pending_diff(deployed: dict[str, dict[str, Any]], doc: dict[str, Any], label: str) -> str:
    """Unified diff from what is deployed to what `doc` (a whole config file) declares,
    per application of the file; empty when they agree."""
    out: list[str] = []
    for app in doc.get("applications") or []:
        name = str(app.get("name", "default"))
        before = _lines(deployed[name]) if name in deployed else []
        after = _lines(app)
        out += difflib.unified_diff(
            before, after, fromfile=f"deployed: {name}", tofile=f"{label}: {name}"
        )
    return "".join(out)


# What a version name stands for, once deployed: the model it computes. Catalog vectors
# are stored under `<model>/<version>`, and callers pin versions by name, so none of
# these may change under a name that runs (other settings, placement or threads, may).
_DEFAULT_TASK = "text-embedding"  # configs.schema.ModelSpec.task's default
_IDENTITY = (("artifact", "uri"), ("artifact", "sha256"), ("runtime",))


def _models(app: Any) -> dict[str, Any]:
    return _mapping(_mapping(_mapping(app).get("args")).get("models"))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _field(spec: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        spec = spec.get(key) if isinstance(spec, dict) else None
    return spec


def _shown(value: Any) -> str:
    text = str(value)
    return f"{text[:12]}..." if len(text) == 64 and text.isalnum() else text  # a sha256


def changed_versions(
    deployed: dict[str, dict[str, Any]], doc: dict[str, Any], runs: str = "is deployed"
) -> list[str]:
    """Each version of servekit's applications in `doc` (a whole config file) that Serve
    already runs under the same name, in the application of the same name, with another
    artifact (`uri`, `sha256`), `runtime` or model `task`: one line naming it and what
    changed (`runs`: how the line says the version runs), and saying to declare a new
    version name (empty: none)."""
    from configs.validate import IMPORT_PATH

    out = []
    for index, app in enumerate(doc.get("applications") or []):
        if not isinstance(app, dict) or app.get("import_path") != IMPORT_PATH:
            continue
        running = deployed.get(str(app.get("name", "default")))
        if running is None or running.get("import_path") != IMPORT_PATH:
            continue
        before_models = _models(running)
        for model, spec in _models(app).items():
            before = before_models.get(model)
            if not isinstance(spec, dict) or not isinstance(before, dict):
                continue
            versions = _mapping(spec.get("versions"))
            ran = _mapping(before.get("versions"))
            task = (before.get("task") or _DEFAULT_TASK, spec.get("task") or _DEFAULT_TASK)
            for version, now in versions.items():
                if version not in ran:
                    continue
                changes = [
                    (".".join(path), _field(ran[version], path), _field(now, path))
                    for path in _IDENTITY
                ]
                changes.append((f"model's task (models.{model}.task)", *task))
                said = [
                    f"{what} to {_shown(new)} (deployed: {_shown(old)})"
                    for what, old, new in changes
                    if old != new
                ]
                if said:
                    out.append(
                        f"applications[{index}].args.models.{model}.versions.{version}: "
                        f"{model}/{version} {runs}, and the file changes its "
                        f"{', its '.join(said)}. A deployed version is immutable (catalog "
                        "indexes keep its vectors under its name, callers pin it by name): "
                        f"declare the new model under a new version name instead of {version}, "
                        "and roll that out"
                    )
    return out
