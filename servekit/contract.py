"""The API contract: the OpenAPI document the service serves, committed as
`api/openapi.json`, and the rules a change to `/v1` must keep.

    servekit api write        # regenerate api/openapi.json from the code
    servekit api check        # exit 1 when the committed document is stale, breaks
                              # /v1 against api/openapi.released.json undeclared, or
                              # lacks a route's examples or error responses

`/v1` only grows. Against the released document, a change is breaking when it removes
a path, an operation or a field, narrows a type (a type changed, an enum value gone, a
bound tightened), adds a required request field or parameter, or moves a deprecation's
sunset earlier. Deprecating is not breaking; removing what was deprecated is not
breaking once its sunset (`x-deprecation.sunset`, see `deployments/http/deprecation.py`)
has passed. A breaking change passes only when `api/changes.yaml` declares it (its path
and why); `servekit api release` makes the current document the released one and clears
the declarations.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "api" / "openapi.json"
RELEASED = ROOT / "api" / "openapi.released.json"
DECLARED = ROOT / "api" / "changes.yaml"
STABLE_PREFIXES = ("/v1/", "/admin/v1/")
METHODS = ("get", "put", "post", "delete", "patch")
# A bound that narrows when it grows (minimums) or when it shrinks (maximums).
LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems")
UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems")


def generate() -> dict[str, Any]:
    """The document the code serves (the same `openapi()` the ingress answers with)."""
    import deployments.app  # noqa: F401  (binds every route onto the app)
    from deployments.http.api import api

    doc: dict[str, Any] = json.loads(json.dumps(api.openapi(), sort_keys=True))
    return doc


def render(doc: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indents, a final newline."""
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _resolve(doc: dict[str, Any], schema: Any, depth: int = 0) -> Any:
    """A schema with its `$ref`s followed (to a bounded depth: schemas may recurse)."""
    if not isinstance(schema, dict) or depth > 8:
        return schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _resolve(doc, doc.get("components", {}).get("schemas", {}).get(name, {}), depth + 1)
    return schema


def _types(schema: dict[str, Any]) -> set[str]:
    if "type" in schema:
        kind = schema["type"]
        return set(kind) if isinstance(kind, list) else {kind}
    found: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key, []):
            found |= _types(option) if isinstance(option, dict) else set()
    return found


def _sunset(node: dict[str, Any]) -> date | None:
    """The sunset day of a deprecated operation or field, if it has one."""
    if not node.get("deprecated"):
        return None
    day = (node.get("x-deprecation") or {}).get("sunset")
    return date.fromisoformat(day) if isinstance(day, str) else None


def _removal(node: dict[str, Any], today: date) -> str | None:
    """Why removing `node` breaks callers (None: deprecated, and its sunset has come)."""
    sunset = _sunset(node)
    if sunset is None:
        return "deprecated, no sunset" if node.get("deprecated") else ""
    return None if sunset <= today else f"before its sunset {sunset.isoformat()}"


def _removed(what: str, node: dict[str, Any], today: date) -> Iterator[str]:
    why = _removal(node, today)
    if why is not None:
        yield f"{what} ({why})" if why else what


def _narrowed(old_doc: dict[str, Any], old: Any, new_doc: dict[str, Any], new: Any, where: str,
              response: bool, today: date, depth: int = 0) -> Iterator[str]:  # fmt: skip
    """How `new` accepts less than `old` (a request) or promises less (a response)."""
    old, new = _resolve(old_doc, old, depth), _resolve(new_doc, new, depth)
    if not isinstance(old, dict) or not isinstance(new, dict) or depth > 8:
        return
    old_types, new_types = _types(old), _types(new)
    if old_types and new_types and not old_types <= new_types and not response:
        yield f"{where}: type {sorted(old_types)} narrowed to {sorted(new_types)}"
    if old_types and new_types and not new_types <= old_types and response:
        yield f"{where}: type {sorted(old_types)} changed to {sorted(new_types)}"
    if "enum" in old and "enum" in new and not set(old["enum"]) <= set(new["enum"]):
        gone = sorted(set(map(str, old["enum"])) - set(map(str, new["enum"])))
        yield f"{where}: enum values removed: {', '.join(gone)}"
    if not response:
        for bound in LOWER_BOUNDS:
            if bound in new and (bound not in old or new[bound] > old[bound]):
                yield f"{where}: {bound} tightened to {new[bound]}"
        for bound in UPPER_BOUNDS:
            if bound in new and (bound not in old or new[bound] < old[bound]):
                yield f"{where}: {bound} tightened to {new[bound]}"
    for old_option, new_option in _same_type_options(old_doc, old, new_doc, new, depth):
        yield from _narrowed(
            old_doc, old_option, new_doc, new_option, where, response, today, depth + 1
        )
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, prop in old_props.items():
        here = f"{where}.{name}"
        if name not in new_props:
            kind = "response" if response else "request"
            yield from _removed(f"{here}: {kind} field removed", prop, today)
            continue
        yield from _narrowed(
            old_doc, prop, new_doc, new_props[name], here, response, today, depth + 1
        )
    if not response:
        added = set(new.get("required", [])) - set(old.get("required", []))
        for name in sorted(added):
            yield f"{where}.{name}: new required field"
    if "items" in old and "items" in new:
        yield from _narrowed(
            old_doc, old["items"], new_doc, new["items"], f"{where}[]", response, today, depth + 1
        )


def _options(doc: dict[str, Any], schema: dict[str, Any], depth: int) -> list[Any]:
    """The alternatives of a schema (`anyOf`, `oneOf`), resolved; a schema of one type
    without alternatives is its own."""
    found = [_resolve(doc, o, depth + 1) for key in ("anyOf", "oneOf") for o in schema.get(key, [])]
    if not found and "type" in schema:
        return [schema]
    return [o for o in found if isinstance(o, dict)]


def _same_type_options(old_doc: dict[str, Any], old: dict[str, Any], new_doc: dict[str, Any],
                       new: dict[str, Any], depth: int) -> Iterator[tuple[Any, Any]]:  # fmt: skip
    """Pairs of alternatives of the same types in `old` and `new`, where either has
    alternatives (a nullable field is `anyOf: [{number, bounds}, {null}]`: its bounds
    are in the number's alternative)."""
    if not any(key in s for s in (old, new) for key in ("anyOf", "oneOf")):
        return
    olds = _options(old_doc, old, depth)
    for option in _options(new_doc, new, depth):
        kinds = _types(option)
        match = next((o for o in olds if kinds and _types(o) == kinds), None)
        if match is not None:
            yield match, option


def _json_schema(operation: dict[str, Any], status: str | None) -> Any:
    part = (
        operation.get("requestBody")
        if status is None
        else operation.get("responses", {}).get(status)
    )
    return (part or {}).get("content", {}).get("application/json", {}).get("schema")


def breaking(old: dict[str, Any], new: dict[str, Any], today: date | None = None) -> list[str]:
    """Every breaking change of the stable paths from `old` to `new` (`today`: the UTC
    day that sunsets are compared with)."""
    today = today or datetime.now(UTC).date()
    found: list[str] = []
    for path, old_ops in sorted(old.get("paths", {}).items()):
        if not path.startswith(STABLE_PREFIXES):
            continue
        new_ops = new.get("paths", {}).get(path)
        if new_ops is None:
            gone = [_removal(old_ops[m], today) for m in METHODS if m in old_ops]
            why = "; ".join(sorted({w for w in gone if w}))
            if any(w is not None for w in gone):
                found.append(f"{path}: path removed ({why})" if why else f"{path}: path removed")
            continue
        for method in METHODS:
            if method not in old_ops:
                continue
            where = f"{method.upper()} {path}"
            if method not in new_ops:
                found += _removed(f"{where}: operation removed", old_ops[method], today)
                continue
            op_old, op_new = old_ops[method], new_ops[method]
            old_sunset, new_sunset = _sunset(op_old), _sunset(op_new)
            if old_sunset and new_sunset and new_sunset < old_sunset:
                found.append(f"{where}: sunset moved earlier, to {new_sunset.isoformat()}")
            old_params = {(p["name"], p["in"]): p for p in op_old.get("parameters", [])}
            for p in op_new.get("parameters", []):
                key = (p["name"], p["in"])
                if p.get("required") and (
                    key not in old_params or not old_params[key].get("required")
                ):
                    found.append(f"{where}: new required {p['in']} parameter {p['name']}")
            body_old, body_new = _json_schema(op_old, None), _json_schema(op_new, None)
            if body_old is not None and body_new is not None:
                found += _narrowed(old, body_old, new, body_new, f"{where} request", False, today)
            for status in op_old.get("responses", {}):
                if not status.startswith("2"):
                    continue
                got_old, got_new = _json_schema(op_old, status), _json_schema(op_new, status)
                if got_old is not None and got_new is not None:
                    found += _narrowed(old, got_old, new, got_new, f"{where} {status}", True, today)
    return found


def declared(path: Path = DECLARED) -> list[dict[str, str]]:
    """The breaking changes declared since the last release (path, why)."""
    if not path.is_file():
        return []
    doc = yaml.safe_load(path.read_text()) or {}
    changes = doc.get("breaking", []) or []
    for n, change in enumerate(changes):
        if not isinstance(change, dict) or not change.get("change") or not change.get("why"):
            raise ValueError(f"{path}: breaking[{n}]: needs 'change' and 'why'")
    return list(changes)


def undeclared(problems: list[str], changes: list[dict[str, str]]) -> list[str]:
    """The breaking changes no declaration names (a declaration names the start of one)."""
    return [p for p in problems if not any(p.startswith(c["change"]) for c in changes)]


def check(document: Path = DOCUMENT, released: Path = RELEASED) -> list[str]:
    """What is wrong with the committed contract; empty when nothing is."""
    current = generate()
    if not document.is_file() or json.loads(document.read_text()) != current:
        return [f"{document.relative_to(ROOT)} is stale: run `servekit api write`"]
    if not released.is_file():
        return [f"{released.relative_to(ROOT)} is missing: run `servekit api release`"]
    problems = breaking(json.loads(released.read_text()), current)
    return [
        f"breaking, undeclared in api/changes.yaml: {p}" for p in undeclared(problems, declared())
    ]


def add_commands(sub: Any) -> None:
    """Register `api write|check|release` on the command line's subparsers."""
    api = sub.add_parser("api", help="the OpenAPI contract: write, check, release")
    verbs = api.add_subparsers(dest="api_verb", required=True)
    verbs.add_parser("write", help="regenerate api/openapi.json from the code")
    verbs.add_parser("check", help="fail on a stale document or an undeclared breaking change")
    verbs.add_parser("release", help="make the current document the released one")


def run(args: argparse.Namespace) -> int:
    """Run an `api` verb; the exit code."""
    if args.api_verb == "write":
        DOCUMENT.parent.mkdir(exist_ok=True)
        DOCUMENT.write_text(render(generate()))
        print(f"wrote {DOCUMENT.relative_to(ROOT)}")
        return 0
    if args.api_verb == "release":
        RELEASED.write_text(render(generate()))
        DECLARED.write_text(
            "# Breaking changes to /v1 since the last release: change, why.\nbreaking: []\n"
        )
        print(f"wrote {RELEASED.relative_to(ROOT)}; declarations cleared")
        return 0
    from servekit import contract_docs

    problems = check()
    if not problems:  # current: the committed document is the served one
        committed = json.loads(DOCUMENT.read_text())
        problems = contract_docs.undocumented(committed) + contract_docs.invalid_examples(committed)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("the contract is current, documented, and /v1 only grew")
    return 1 if problems else 0
