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


def _mapping(value: Any, where: str) -> Any:
    """`value` when it is a mapping (an empty one for None); else EditError naming
    `where`: an edit never fails on a hand-edited file with a traceback."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EditError(f"{where}: expected a mapping, found {_kind(value)}")
    return value


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

    def _app(self) -> tuple[str, Any]:
        """Where servekit's application is (`applications[0]`) and its mapping."""
        apps = self.doc.get("applications") or []
        for n, app in enumerate(apps if isinstance(apps, list) else []):
            if isinstance(app, dict) and app.get("import_path") == IMPORT_PATH:
                return f"applications[{n}]", app
        raise EditError(f"no application with import_path {IMPORT_PATH!r}")

    def app(self) -> Any:
        """The servekit application of the file."""
        return self._app()[1]

    def versions(self, model: str) -> list[str]:
        """Declared versions of a model."""
        where, app = self._app()
        args = _mapping(app.get("args"), f"{where}.args")
        models = _mapping(args.get("models"), f"{where}.args.models")
        if model not in models:
            declared = ", ".join(str(m) for m in models)
            raise EditError(f"model {model!r} is not declared (declared: {declared})")
        spec = _mapping(models[model], f"{where}.args.models.{model}")
        versions = _mapping(spec.get("versions"), f"{where}.args.models.{model}.versions")
        return [str(v) for v in versions]

    def _ingress_where(self) -> str:
        return f"{self._app()[0]}.deployments[{INGRESS_DEPLOYMENT}].user_config"

    def ingress_live(self) -> Any:
        """The ingress deployment's user_config mapping."""
        where, app = self._app()
        deployments = app.get("deployments") or []
        if not isinstance(deployments, list):
            raise EditError(f"{where}.deployments: expected a list of deployments")
        for entry in deployments:
            if isinstance(entry, dict) and entry.get("name") == INGRESS_DEPLOYMENT:
                live = entry.get("user_config")
                if live is None:
                    break
                _mapping(live, self._ingress_where())
                if "traffic" not in live:
                    break
                _mapping(live["traffic"], f"{self._ingress_where()}.traffic")
                return live
        raise EditError(f"deployments[{INGRESS_DEPLOYMENT}].user_config.traffic is missing")

    def traffic(self, model: str) -> Any:
        """The editable traffic mapping of a model."""
        traffic = self.ingress_live()["traffic"]
        if model not in traffic:
            raise EditError(f"traffic has no entry for model {model!r}")
        weights = traffic[model]
        if not isinstance(weights, dict):  # None too: the edit must land in the file
            raise EditError(
                f"{self._ingress_where()}.traffic.{model}: expected a mapping of version: "
                f"weight, found {'nothing' if weights is None else _kind(weights)}"
            )
        return weights

    def weights(self, model: str, declared: list[str]) -> dict[str, int]:
        """The model's weight of each declared version (0 where it has none), each a
        whole number in 0..100 (else EditError naming it)."""
        traffic = self.traffic(model)
        weights = {}
        for version in declared:
            weight = traffic.get(version, 0)
            try:
                if isinstance(weight, bool) or (isinstance(weight, float) and weight % 1):
                    raise ValueError
                weights[version] = int(weight)
                if not 0 <= weights[version] <= 100:
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                where = f"{self._ingress_where()}.traffic.{model}.{version}"
                raise EditError(f"{where}: the weight is not a whole number 0..100") from None
        return weights

    def rollout_policy(self, model: str) -> Any:
        """The model's rollout policy mapping (None when there is none)."""
        return self._live_entry("rollout", model)

    def shadow(self, model: str) -> Any:
        """The model's shadow mapping (`version`, `fraction`; None when there is none)."""
        return self._live_entry("shadow", model)

    def _live_entry(self, section: str, model: str) -> Any:
        """The model's mapping under the ingress user_config's `section` (None when
        there is none)."""
        block = self.ingress_live().get(section)
        if block is None:
            return None
        entry = _mapping(block, f"{self._ingress_where()}.{section}").get(model)
        if entry is None:
            return None
        return _mapping(entry, f"{self._ingress_where()}.{section}.{model}")

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
    A version left with all the traffic loses what was aimed at it as a candidate: the
    canary watch of the promoted version, and a shadow mirroring to it.

    The rollout is recorded for `rollback`: steps of the same version in a row are
    one rollout, so the record keeps the weights from before its first step."""
    declared = cfg.versions(model)
    if version not in declared:
        raise EditError(f"{model} has no version {version!r} (declared: {', '.join(declared)})")
    if not 0 <= weight <= 100:
        raise EditError(f"weight {weight} is outside 0..100")
    traffic = cfg.traffic(model)
    current = cfg.weights(model, declared)
    split = split_rest(current, version, weight)
    new = {v: split[v] for v in declared}
    if new != current:
        last = cfg.last_promotion(model)
        goes_on = last is not None and last.version == version and last.describes(current, declared)
        before = last.before if last is not None and goes_on else current
        _set_weights(traffic, declared, new)
        cfg.record_promotion(model, Promotion(version, before, new) if new != before else None)
    return _end_candidacy(cfg, model, new)


def _end_candidacy(cfg: ConfigFile, model: str, weights: dict[str, int]) -> list[str]:
    """When `weights` give one version all of the model's traffic (however it came to
    have it: promoted to 100, every other version promoted to 0, a rollback), what was
    aimed at it as a candidate goes: its canary watch and a shadow mirroring to it.
    Notes saying what went."""
    sole = next((v for v, w in weights.items() if w == 100), None)
    if sole is None:
        return []
    return _end_watch(cfg, model, sole) + _end_shadow(cfg, model, sole)


def _end_watch(cfg: ConfigFile, model: str, sole: str) -> list[str]:
    """Remove `model`'s rollout policy when it watches `sole` (which takes all the
    traffic), and the `rollout` block once it is empty; a note saying so."""
    policy = cfg.rollout_policy(model)
    if policy is None or policy.get("canary") != sole:
        return []
    _drop_live_entry(cfg, "rollout", model)
    return [f"{sole} now takes all traffic: its canary watch is removed"]


def _end_shadow(cfg: ConfigFile, model: str, sole: str) -> list[str]:
    """Remove `model`'s shadow when it mirrors to `sole` (its copies would go to the
    version that already answers every request: work for nothing), and the `shadow`
    block once it is empty; a note saying so."""
    shadow = cfg.shadow(model)
    if shadow is None or shadow.get("version") != sole:
        return []
    fraction = shadow.get("fraction")
    share = f"{fraction * 100:g}% of " if isinstance(fraction, int | float) else ""
    _drop_live_entry(cfg, "shadow", model)
    return [f"{sole} takes all traffic: the shadow mirroring {share}its requests to it is removed"]


def _drop_live_entry(cfg: ConfigFile, section: str, model: str) -> None:
    """Delete `model` from the ingress user_config's `section` (`rollout`, `shadow`),
    and the section once it is empty, keeping the comment lines that followed it."""
    live = cfg.ingress_live()
    block = live[section]
    below = _remove(block, model)
    if not block and section in live:
        below = _remove(live, section, below)
        block = live
    if below and block:  # it came first: the comment lines go above what follows
        _keep_below(block, next(iter(block)), below, before=True)


def _remove(mapping: Any, key: str, carried: str = "") -> str:
    """Delete `key` from a mapping, keeping the comment lines that follow its entry (the
    next section's comment, commented-out settings): ruamel holds them on the last entry
    of the removed block, so they went with it. They move to the entry before it; when
    there is none, they are returned (with `carried`, lines an inner removal returned)."""
    below = carried
    where = _last_entry(mapping, key)
    if where is not None:
        token = _eol_token(*where)
        if token is not None and "\n" in token.value:
            below = token.value.partition("\n")[2] + carried
    keys = list(mapping)
    del mapping[key]
    at = keys.index(key)
    if not below.strip():
        return ""
    if at == 0:
        return below
    _keep_below(mapping, keys[at - 1], below)
    return ""


def _last_entry(mapping: Any, key: Any) -> tuple[Any, Any] | None:
    """(mapping, key) of the last entry written in `mapping[key]`'s block (itself, for
    a scalar or a flow collection): where ruamel keeps the comment lines below it."""
    node = mapping
    while True:
        child = node[key]
        flow = getattr(getattr(child, "fa", None), "flow_style", lambda: False)()
        if isinstance(child, dict) and child and not flow:
            node, key = child, next(reversed(child))
            continue
        if isinstance(child, list) and child and not flow:
            return None  # a block sequence keeps its comments elsewhere: left as it was
        return node, key


def _eol_token(mapping: Any, key: Any) -> Any:
    entry = getattr(mapping, "ca", None) and mapping.ca.items.get(key)
    return entry[2] if entry and len(entry) > 2 else None


def _keep_below(mapping: Any, key: Any, lines: str, before: bool = False) -> None:
    """Write comment `lines` below the block of `mapping[key]` (after whatever comment
    lines it has there already), or, with `before`, above that key's line."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    if before:
        column = mapping.lc.col if getattr(mapping, "lc", None) is not None else 0
        text = "\n".join(line.strip().removeprefix("#").removeprefix(" ")
                         for line in lines.splitlines() if line.strip())  # fmt: skip
        mapping.yaml_set_comment_before_after_key(key, before=text, indent=column or 0)
        return
    where = _last_entry(mapping, key)
    if where is None:
        return
    node, last = where
    token = _eol_token(node, last)
    if token is None:
        node.ca.items[last] = [None, None, CommentToken("\n" + lines, CommentMark(0), None), None]
    else:
        token.value = token.value if token.value.endswith("\n") else token.value + "\n"
        token.value += lines


def rollback(cfg: ConfigFile, model: str, to: str | None) -> list[str]:
    """Undo the last promotion of a model (its weights return to what they were
    before it), or, with `to` or without a usable record, send all of the model's
    traffic to one version. Returns notes saying which happened and why."""
    declared = cfg.versions(model)
    traffic = cfg.traffic(model)
    current = cfg.weights(model, declared)
    last = cfg.last_promotion(model)
    cfg.record_promotion(model, None)
    if to is None and last is not None and last.describes(current, declared):
        restored = {v: last.before.get(v, 0) for v in declared}
        _set_weights(traffic, declared, restored)
        return [
            f"undid the last promotion of {model} {last.version}: "
            f"weights back to {_weights_text(last.before)}",
            *_end_candidacy(cfg, model, restored),
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
    all_to_target = {v: 100 if v == target else 0 for v in declared}
    _set_weights(traffic, declared, all_to_target)
    return [
        *([why] if why else []),
        f"all traffic of {model} goes to {target}",
        *_end_candidacy(cfg, model, all_to_target),
    ]


def _set_weights(traffic: Any, declared: list[str], weights: dict[str, int]) -> None:
    for v in declared:
        if v in traffic:
            traffic[v] = weights[v]
        elif weights[v]:
            _append(traffic, v, weights[v])


def _append(mapping: Any, key: str, value: int) -> None:
    """Add `key` at the end of a block mapping, below its last entry. ruamel keeps the
    comment lines that follow a mapping (the next section's comment, when the mapping
    ends a block) on its last entry's comment, so a key added after it was written
    below them, away from its mapping; they move to the new last entry instead."""
    last = next(reversed(mapping), None) if len(mapping) else None
    token = _eol_token(mapping, last) if last is not None else None
    mapping[key] = value
    if token is None or "\n" not in token.value.rstrip("\n"):
        return  # no comment lines below the last entry: nothing to move
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    own, _, below = token.value.partition("\n")
    token.value = own + "\n"
    mapping.ca.items[key] = [None, None, CommentToken("\n" + below, CommentMark(0), None), None]


def _rollback_target(cfg: ConfigFile, model: str, weights: dict[str, int]) -> str:
    """The primary: the heaviest version with traffic that is not the canary. Two tied
    for heaviest are refused (whether or not a canary is watched): which one is the
    primary is the operator's call, made with --to."""
    policy = cfg.rollout_policy(model)
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
    to their current weights (largest remainder), or, when none has any, the one other
    version takes it all (with several, which one is the operator's call: refused)."""
    others = {v: w for v, w in current.items() if v != version}
    rest = 100 - weight
    total = sum(others.values())
    new = {version: weight}
    if total == 0:
        if rest and not others:
            raise EditError(f"{version} is the only version; its weight must be 100")
        if rest and len(others) > 1:
            raise EditError(
                f"no other version has traffic to take the other {rest}% "
                f"({', '.join(others)} are at 0): promote the one that should take it "
                f"instead (--weight {rest})"
            )
        new.update(dict.fromkeys(others, rest))
        return new
    exact = {v: rest * w / total for v, w in others.items()}
    floors = {v: int(x) for v, x in exact.items()}
    left = rest - sum(floors.values())
    for v in sorted(exact, key=lambda v: exact[v] - floors[v], reverse=True)[:left]:
        floors[v] += 1
    new.update(floors)
    return new
