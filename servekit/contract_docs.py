"""What the OpenAPI document must say about every `/v1` and `/admin/v1` operation, so
that callers and the SDKs can rely on it: an example of its request body and of its
success response, and the error responses it can answer, each in the error envelope
(`ErrorBody`) with an example.

The errors every keyed route can answer (`ALWAYS` in `deployments/http/route_docs.py`:
401, 403, 429, 500, 503) must be there, and 400 wherever a body or a constrained
parameter can be invalid; the rest (404, 409, 413, 504...) only the route knows, and
lists them with `responses(...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from deployments.http.route_docs import ALWAYS

STABLE_PREFIXES = ("/v1/", "/admin/v1/")
METHODS = ("get", "put", "post", "delete", "patch")
ERROR_SCHEMA = "#/components/schemas/ErrorBody"
HELPER = "deployments/http/route_docs.py"
# Keywords that let a parameter's value be refused (a plain string never is).
CONSTRAINTS = ("pattern", "minLength", "maxLength", "enum", "const", "format", "minimum",
               "maximum", "exclusiveMinimum", "exclusiveMaximum")  # fmt: skip


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """`("POST /v1/search", operation)` for every stable operation."""
    for path, ops in sorted(doc.get("paths", {}).items()):
        if path.startswith(STABLE_PREFIXES):
            for method in METHODS:
                if method in ops:
                    yield f"{method.upper()} {path}", ops[method]


def _resolve(doc: dict[str, Any], schema: Any) -> Any:
    for _ in range(8):
        if not isinstance(schema, dict) or "$ref" not in schema:
            return schema
        schema = doc.get("components", {}).get("schemas", {}).get(schema["$ref"].rsplit("/")[-1])
    return schema


def examples_of(doc: dict[str, Any], media: dict[str, Any]) -> list[Any]:
    """The examples a media type gives: its own, else its schema's (an array's: of its
    items)."""
    found = [media["example"]] if "example" in media else []
    found += [e.get("value") for e in media.get("examples", {}).values() if "value" in e]
    if found:
        return found
    return _schema_examples(doc, media.get("schema"))


def _schema_examples(doc: dict[str, Any], schema: Any) -> list[Any]:
    """A schema's examples; an array's made of its items'; a union's, of its options'."""
    schema = _resolve(doc, schema)
    if not isinstance(schema, dict):
        return []
    if schema.get("examples"):
        return list(schema["examples"])
    if schema.get("type") == "array":
        return [[e] for e in _schema_examples(doc, schema.get("items"))]
    options = schema.get("anyOf", []) + schema.get("oneOf", [])
    return [e for option in options for e in _schema_examples(doc, option)]


def _json(part: dict[str, Any] | None) -> dict[str, Any] | None:
    content = (part or {}).get("content", {})
    media: dict[str, Any] | None = content.get("application/json")
    return media


def _can_be_invalid(doc: dict[str, Any], parameter: dict[str, Any]) -> bool:
    schema = _resolve(doc, parameter.get("schema", {})) or {}
    options = schema.get("anyOf", [schema])
    for option in (_resolve(doc, o) or {} for o in options):
        if option.get("type", "string") not in ("string", "null"):
            return True
        if any(key in option for key in CONSTRAINTS):
            return True
    return False


def _needed(doc: dict[str, Any], operation: dict[str, Any]) -> set[int]:
    needed = set(ALWAYS)
    if operation.get("requestBody") or any(
        _can_be_invalid(doc, p) for p in operation.get("parameters", [])
    ):
        needed.add(400)
    return needed


def undocumented(doc: dict[str, Any]) -> list[str]:
    """What the document lacks, one line per operation and gap, saying how to fix it."""
    found: list[str] = []
    for where, operation in operations(doc):
        body = _json(operation.get("requestBody"))
        if body is not None and not examples_of(doc, body):
            found.append(
                f"{where}: the request body has no example: give its model "
                f"`model_config = ConfigDict(json_schema_extra=example(...))` ({HELPER})"
            )
        responses: dict[str, Any] = operation.get("responses", {})
        successes = [s for s in responses if s.startswith("2")]
        if not successes:
            found.append(f"{where}: no success response documented")
        for status in successes:
            media = _json(responses[status])
            if media is not None and not examples_of(doc, media):
                found.append(
                    f"{where}: the {status} response has no example: give its response "
                    f"model `json_schema_extra=example(...)`, or pass "
                    f"`responses=responses(..., example=...)` ({HELPER})"
                )
        statuses = {int(s) for s in responses if s[:1] in "45" and s.isdigit()}
        missing = sorted(_needed(doc, operation) - statuses)
        if missing:
            found.append(
                f"{where}: error responses missing: {', '.join(map(str, missing))}: "
                f"declare `responses=responses(<every error status it answers>)` ({HELPER})"
            )
        for code in sorted(statuses):
            media = _json(responses[str(code)]) or {}
            if media.get("schema") != {"$ref": ERROR_SCHEMA}:
                found.append(
                    f"{where}: the {code} response is not the error envelope (ErrorBody): "
                    f"declare it with `responses(...)` ({HELPER})"
                )
            elif not examples_of(doc, media):
                found.append(f"{where}: the {code} response has no example ({HELPER})")
    return found


def invalid_examples(doc: dict[str, Any]) -> list[str]:
    """Every example of a stable operation that its own schema refuses."""
    import jsonschema  # a dev dependency: only the checks use it

    found: list[str] = []
    components = {"components": doc.get("components", {})}
    for where, operation in operations(doc):
        parts = [("request body", _json(operation.get("requestBody")))]
        for status, response in sorted(operation.get("responses", {}).items()):
            parts.append((f"{status} response", _json(response)))
        for name, media in parts:
            if media is None or "schema" not in media:
                continue
            validator = jsonschema.Draft202012Validator({**media["schema"], **components})
            for example in examples_of(doc, media):
                error = jsonschema.exceptions.best_match(validator.iter_errors(example))
                if error is not None:
                    at = "/".join(map(str, error.absolute_path)) or "(root)"
                    found.append(f"{where}: the {name} example is invalid at {at}: {error.message}")
    return found
