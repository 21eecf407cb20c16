"""Edit traffic in `serve_config.yaml` keeping its comments and layout.

Used by `servekit promote` and `servekit rollback`: the file stays the single source
of truth, and every change to it is a reviewable diff.

`promote` leaves a record of the rollout on the model's line under `traffic`, so
that `rollback` can undo it without being told what the weights were:

    minilm:  # last promote: v2, from v1=90 v2=10 to v1=50 v2=50 (for servekit rollback)

It lives in the file because the file is what is reviewed, committed and applied
(here, or by `make cluster` on a cluster): the record travels with the weights it
describes, changes in the same diff, and cannot disagree with another copy.
"""

from __future__ import annotations

import difflib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from configs.schema import INGRESS_DEPLOYMENT
from configs.validate import IMPORT_PATH


class EditError(ValueError):
    """The requested change does not fit the file."""


_RECORD = re.compile(
    r"#\s*last promote: (?P<version>[^,\s]+), from (?P<before>[^()]*?) "
    r"to (?P<after>[^()]*?) \(for servekit rollback\)"
)


def _weights_text(weights: dict[str, int]) -> str:
    return " ".join(f"{v}={w}" for v, w in weights.items())


def _parse_weights(text: str) -> dict[str, int]:
    pairs = [item.split("=", 1) for item in text.split()]
    return {v: int(w) for v, w in pairs}


@dataclass(frozen=True)
class Promotion:
    """A rollout of one version by `servekit promote`: the weights before its first
    step and after its last."""

    version: str
    before: dict[str, int]
    after: dict[str, int]

    def comment(self) -> str:
        return (
            f"# last promote: {self.version}, from {_weights_text(self.before)} "
            f"to {_weights_text(self.after)} (for servekit rollback)"
        )

    @classmethod
    def find(cls, text: str) -> Promotion | None:
        """The record in a comment, if there is one that reads."""
        match = _RECORD.search(text)
        if match is None:
            return None
        try:
            before, after = _parse_weights(match["before"]), _parse_weights(match["after"])
        except ValueError:
            return None
        return cls(match["version"], before, after)

    def describes(self, weights: dict[str, int], declared: list[str]) -> bool:
        """Whether the weights are still those this promotion wrote (a version added
        since, at weight 0, changes nothing), over versions still declared."""
        names = set(weights) | set(self.after)
        return set(self.before) <= set(declared) and all(
            weights.get(v, 0) == self.after.get(v, 0) for v in names
        )


def read_problem(path: Path, error: Exception, what: str = "a config file") -> str:
    """What went wrong reading a file (`what` it should be), naming it: missing, a
    directory, unreadable, not text, or not valid YAML (with the line, for PyYAML's
    errors and ruamel's alike)."""
    if isinstance(error, FileNotFoundError):
        return f"{path}: no such file"
    if isinstance(error, IsADirectoryError):
        return f"{path}: is a directory, not {what}"
    if isinstance(error, OSError):
        return f"{path}: cannot be read ({error.strerror or error})"
    if isinstance(error, UnicodeDecodeError):
        return f"{path}: not a text file (UTF-8)"
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None)
    return f"{where}: not valid YAML" + (f" ({problem})" if problem else "")


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _kind(doc: Any) -> str:
    """How a YAML document that is not a mapping reads, in words."""
    if doc is None:
        return "an empty document"
    if isinstance(doc, list):
        return "a list"
    return f"a {type(doc).__name__} value"


@dataclass
class ConfigFile:
    """A config file loaded for round-trip editing."""

    path: Path
    text: str
    doc: Any

    @classmethod
    def load(cls, path: Path) -> ConfigFile:
        """Read a file; comments and layout are kept for `render()`. Raises EditError,
        naming the file, when it cannot be read or is not a YAML mapping."""
        try:
            text = path.read_text()
            doc = _yaml().load(text)
        except (OSError, UnicodeDecodeError, YAMLError) as e:
            raise EditError(read_problem(path, e)) from e
        if not isinstance(doc, dict):
            raise EditError(
                f"{path}: expected a mapping (a Serve config with applications:), "
                f"found {_kind(doc)}"
            )
        return cls(path, text, doc)

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
        apps = self.doc.get("applications") or []
        for app in apps if isinstance(apps, list) else []:
            if isinstance(app, dict) and app.get("import_path") == IMPORT_PATH:
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

    def last_promotion(self, model: str) -> Promotion | None:
        """The promotion recorded on the model's line under `traffic`, if any."""
        token = self._comment_token(model)
        return Promotion.find(token.value) if token is not None else None

    def record_promotion(self, model: str, promotion: Promotion | None) -> None:
        """Write (or, with None, remove) the record, keeping any other comment."""
        token = self._comment_token(model)
        if token is None:
            if promotion is not None:
                self.ingress_live()["traffic"].yaml_add_eol_comment(promotion.comment(), model)
            return
        first, newline, rest = token.value.partition("\n")
        kept = _RECORD.sub("", first).rstrip()
        record = promotion.comment() if promotion is not None else ""
        first = f"{kept}  {record}" if kept and record else kept or record
        if first or rest:
            token.value = first + newline + rest
        else:
            self._drop_comment(model)

    def _comment_token(self, model: str) -> Any:
        # ruamel keeps the comment after `model:` on the traffic mapping's entry and,
        # for a block mapping value, on the value as well (the same token).
        self.traffic(model)
        traffic = self.ingress_live()["traffic"]
        entry = traffic.ca.items.get(model)
        if entry is not None and len(entry) > 2 and entry[2] is not None:
            return entry[2]
        inner = getattr(traffic[model], "ca", None)
        return inner.comment[0] if inner is not None and inner.comment else None

    def _drop_comment(self, model: str) -> None:
        traffic = self.ingress_live()["traffic"]
        entry = traffic.ca.items.get(model)
        if entry is not None and len(entry) > 2:
            entry[2] = None
        inner = getattr(traffic[model], "ca", None)
        if inner is not None and inner.comment:
            inner.comment[0] = None


def promote(cfg: ConfigFile, model: str, version: str, weight: int) -> list[str]:
    """Give `version` `weight` percent; the rest keeps its proportions. Returns notes.

    The rollout is recorded for `rollback`: steps of the same version in a row are
    one rollout, so the record keeps the weights from before its first step."""
    declared = cfg.versions(model)
    if version not in declared:
        raise EditError(f"{model} has no version {version!r} (declared: {', '.join(declared)})")
    if not 0 <= weight <= 100:
        raise EditError(f"weight {weight} is outside 0..100")
    traffic = cfg.traffic(model)
    current = {v: int(traffic.get(v, 0)) for v in declared}
    split = split_rest(current, version, weight)
    new = {v: split[v] for v in declared}
    if new != current:
        last = cfg.last_promotion(model)
        goes_on = last is not None and last.version == version and last.describes(current, declared)
        before = last.before if last is not None and goes_on else current
        _set_weights(traffic, declared, new)
        cfg.record_promotion(model, Promotion(version, before, new) if new != before else None)
    notes = []
    if weight == 100 and _end_watch(cfg, model, version):
        notes.append(f"{version} now takes all traffic: its canary watch is removed")
    return notes


def _end_watch(cfg: ConfigFile, model: str, version: str) -> bool:
    """Remove `model`'s rollout policy when it watches `version` (which is taking all
    the traffic), and the `rollout` block once it is empty; whether it did."""
    live = cfg.ingress_live()
    rollout = live.get("rollout") or {}
    policy = rollout.get(model)
    if policy is None or policy.get("canary") != version:
        return False
    del rollout[model]
    if not rollout and "rollout" in live:
        del live["rollout"]
    return True


def rollback(cfg: ConfigFile, model: str, to: str | None) -> list[str]:
    """Undo the last promotion of a model (its weights return to what they were
    before it), or, with `to` or without a usable record, send all of the model's
    traffic to one version. Returns notes saying which happened and why."""
    declared = cfg.versions(model)
    traffic = cfg.traffic(model)
    current = {v: int(traffic.get(v, 0)) for v in declared}
    last = cfg.last_promotion(model)
    cfg.record_promotion(model, None)
    if to is None and last is not None and last.describes(current, declared):
        _set_weights(traffic, declared, {v: last.before.get(v, 0) for v in declared})
        return [
            f"undid the last promotion of {model} {last.version}: "
            f"weights back to {_weights_text(last.before)}"
        ]
    why = ""
    if to is None and last is not None:
        why = (
            f"the last promotion recorded ({last.version}, to {_weights_text(last.after)}) "
            f"is not what the file says now ({_weights_text(current)}): it was edited since"
        )
    elif to is None:
        why = f"no promotion of {model} is recorded in the file"
    try:
        target = to or _rollback_target(cfg, model, current)
    except EditError as e:
        raise EditError(f"{e} ({why})" if why else str(e)) from e
    if target not in declared:
        raise EditError(f"{model} has no version {target!r} (declared: {', '.join(declared)})")
    _set_weights(traffic, declared, {v: 100 if v == target else 0 for v in declared})
    ended = _end_watch(cfg, model, target)
    return [
        *([why] if why else []),
        f"all traffic of {model} goes to {target}",
        *([f"{target} was the canary: its canary watch is removed"] if ended else []),
    ]


def _set_weights(traffic: Any, declared: list[str], weights: dict[str, int]) -> None:
    for v in declared:
        if v in traffic or weights[v]:
            traffic[v] = weights[v]


def _rollback_target(cfg: ConfigFile, model: str, weights: dict[str, int]) -> str:
    """The primary: the heaviest version with traffic that is not the canary. Two tied
    for heaviest are refused (whether or not a canary is watched): which one is the
    primary is the operator's call, made with --to."""
    policy = (cfg.ingress_live().get("rollout") or {}).get(model)
    canary = policy.get("canary") if policy is not None else None
    candidates = {v: w for v, w in weights.items() if v != canary and w > 0}
    if not candidates:
        raise EditError(f"{model}: no version to roll back to; say which with --to")
    ranked = sorted(candidates.values(), reverse=True)
    if len(ranked) > 1 and ranked[0] == ranked[1]:
        tied = sorted(v for v, w in candidates.items() if w == ranked[0])
        raise EditError(
            f"{model}: no single primary version ({' and '.join(tied)} tie at {ranked[0]}); "
            "say which with --to"
        )
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
