"""Edit traffic in `serve_config.yaml` keeping its comments and layout.

Used by `servekit promote` and `servekit rollback`: the file stays the single source
of truth, and every change to it is a reviewable diff.
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from configs.schema import INGRESS_DEPLOYMENT
from configs.validate import IMPORT_PATH


class EditError(ValueError):
    """The requested change does not fit the file."""


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


@dataclass
class ConfigFile:
    """A config file loaded for round-trip editing."""

    path: Path
    text: str
    doc: Any

    @classmethod
    def load(cls, path: Path) -> ConfigFile:
        """Read a file; comments and layout are kept for `render()`."""
        text = path.read_text()
        return cls(path, text, _yaml().load(text))

    def render(self) -> str:
        """The document as YAML, comments and layout preserved."""
        out = io.StringIO()
        _yaml().dump(self.doc, out)
        return out.getvalue()

    def diff(self) -> str:
        """Unified diff between the file on disk and the edited document."""
        return "".join(
            difflib.unified_diff(
                self.text.splitlines(keepends=True),
                self.render().splitlines(keepends=True),
                fromfile=f"{self.path} (current)",
                tofile=f"{self.path} (new)",
            )
        )

    def app(self) -> Any:
        """The servekit application of the file."""
        for app in self.doc.get("applications") or []:
            if app.get("import_path") == IMPORT_PATH:
                return app
        raise EditError(f"no application with import_path {IMPORT_PATH!r}")

    def versions(self, model: str) -> list[str]:
        """Declared versions of a model."""
        models = self.app().get("args", {}).get("models", {})
        if model not in models:
            raise EditError(f"model {model!r} is not declared (declared: {', '.join(models)})")
        return list(models[model].get("versions", {}))

    def ingress_live(self) -> Any:
        """The ingress deployment's user_config mapping."""
        for entry in self.app().get("deployments") or []:
            if entry.get("name") == INGRESS_DEPLOYMENT:
                live = entry.get("user_config")
                if live is None or "traffic" not in live:
                    break
                return live
        raise EditError(f"deployments[{INGRESS_DEPLOYMENT}].user_config.traffic is missing")

    def traffic(self, model: str) -> Any:
        """The editable traffic mapping of a model."""
        traffic = self.ingress_live()["traffic"]
        if model not in traffic:
            raise EditError(f"traffic has no entry for model {model!r}")
        return traffic[model]


def promote(cfg: ConfigFile, model: str, version: str, weight: int) -> list[str]:
    """Give `version` `weight` percent; the rest keeps its proportions. Returns notes."""
    declared = cfg.versions(model)
    if version not in declared:
        raise EditError(f"{model} has no version {version!r} (declared: {', '.join(declared)})")
    if not 0 <= weight <= 100:
        raise EditError(f"weight {weight} is outside 0..100")
    traffic = cfg.traffic(model)
    current = {v: int(traffic.get(v, 0)) for v in declared}
    new = split_rest(current, version, weight)
    for v in declared:
        if v in traffic or new[v]:
            traffic[v] = new[v]
    notes = []
    rollout = cfg.ingress_live().get("rollout") or {}
    policy = rollout.get(model)
    if policy is not None and policy.get("canary") == version and weight == 100:
        del rollout[model]
        notes.append(f"{version} now takes all traffic: its canary watch is removed")
    return notes


def rollback(cfg: ConfigFile, model: str, to: str | None) -> str:
    """Send all of a model's traffic to one version; returns that version."""
    declared = cfg.versions(model)
    traffic = cfg.traffic(model)
    target = to or _rollback_target(cfg, model, {v: int(traffic.get(v, 0)) for v in declared})
    if target not in declared:
        raise EditError(f"{model} has no version {target!r} (declared: {', '.join(declared)})")
    for v in declared:
        if v in traffic or v == target:
            traffic[v] = 100 if v == target else 0
    return target


def _rollback_target(cfg: ConfigFile, model: str, weights: dict[str, int]) -> str:
    policy = (cfg.ingress_live().get("rollout") or {}).get(model)
    canary = policy.get("canary") if policy is not None else None
    candidates = {v: w for v, w in weights.items() if v != canary and w > 0}
    if canary is None and len(candidates) > 1:
        ranked = sorted(candidates.values(), reverse=True)
        if ranked[0] == ranked[1]:
            raise EditError(f"{model}: no single primary version; say which with --to")
    if not candidates:
        raise EditError(f"{model}: no version to roll back to; say which with --to")
    return max(candidates, key=lambda v: candidates[v])


def split_rest(current: dict[str, int], version: str, weight: int) -> dict[str, int]:
    """New weights: `version` gets `weight`; the others share the rest in proportion
    to their current weights (largest remainder), or the heaviest takes it all when
    none has any."""
    others = {v: w for v, w in current.items() if v != version}
    rest = 100 - weight
    total = sum(others.values())
    new = {version: weight}
    if total == 0:
        if rest and not others:
            raise EditError(f"{version} is the only version; its weight must be 100")
        heir = max(others, key=lambda v: current[v]) if others else None
        new.update({v: (rest if v == heir else 0) for v in others})
        return new
    exact = {v: rest * w / total for v, w in others.items()}
    floors = {v: int(x) for v, x in exact.items()}
    left = rest - sum(floors.values())
    for v in sorted(exact, key=lambda v: exact[v] - floors[v], reverse=True)[:left]:
        floors[v] += 1
    new.update(floors)
    return new
