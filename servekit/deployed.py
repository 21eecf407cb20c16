"""What Serve runs, as the config it was last given, and how a file differs from it.

`servekit promote` and `rollback` show the diff of the file they edit; an apply deploys
the whole file, though, and the file may already differ from what runs (a hand edit,
an earlier `--no-apply`). These find that difference, so it is shown too.
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
