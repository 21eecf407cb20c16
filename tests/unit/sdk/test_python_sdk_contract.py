"""The Python SDK against the committed OpenAPI document: every `/v1` and admin operation
has a client method (sync and async alike) taking every documented field and parameter,
and every response model has the fields and types of the schema it names."""

from __future__ import annotations

import inspect
import json
from typing import Any, get_args, get_origin

import pytest

from servekit_client import Admin, AsyncAdmin, AsyncClient, Client, models
from servekit_client._routes import ROUTES
from tests.conftest import REPO_ROOT

DOC: dict[str, Any] = json.loads((REPO_ROOT / "api" / "openapi.json").read_text())
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
METHODS = ("get", "put", "post", "delete", "patch")
OPERATIONS = sorted(
    (method.upper(), path)
    for path, ops in DOC["paths"].items()
    if path.startswith(("/v1/", "/admin/v1/"))
    for method in ops
    if method in METHODS
)
BY_OPERATION = {(route.method, route.path): name for name, route in ROUTES.items()}
# Headers a method takes beyond the document's parameters (the search route reads them
# too; the document lists them for embeddings only; `Idempotency-Key` of the events route
# is in its description only).
EXTRA_PARAMETERS = {"model_version", "routing_key", "idempotency_key"}
# What shapes a type: titles, descriptions, examples, defaults and bounds do not.
TYPE_KEYS = {"type", "format", "items", "additionalProperties", "anyOf", "$ref", "enum", "const"}
MODELS = {
    cls.__name__: cls
    for cls in vars(models).values()
    if inspect.isclass(cls) and issubclass(cls, models.ApiModel) and cls is not models.ApiModel
}
TYPED = sorted(name for name, cls in MODELS.items() if cls.openapi_schema)


def _operation(method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = DOC["paths"][path][method.lower()]
    return op


def _methods(name: str) -> tuple[Any, Any]:
    """The sync and async method a route name refers to."""
    if name.startswith("admin."):
        attr = name.removeprefix("admin.")
        return getattr(Admin, attr, None), getattr(AsyncAdmin, attr, None)
    return getattr(Client, name, None), getattr(AsyncClient, name, None)


def _deref(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _shape(node: Any, ref_names: dict[str, str]) -> Any:
    """A schema reduced to what makes its type, `$ref`s as component names."""
    if isinstance(node, list):
        return [_shape(n, ref_names) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in TYPE_KEYS:
            continue
        if key == "$ref":
            name = value.rsplit("/", 1)[1]
            out[key] = ref_names.get(name, name)
        elif key == "anyOf":
            shapes = [_shape(v, ref_names) for v in value]
            out[key] = sorted(shapes, key=lambda s: json.dumps(s, sort_keys=True))
        else:
            out[key] = _shape(value, ref_names)
    return out


def _fields(schema: dict[str, Any], ref_names: dict[str, str]) -> dict[str, Any]:
    props = schema.get("properties", {})
    return {
        "properties": {name: _shape(p, ref_names) for name, p in props.items()},
        "required": sorted(schema.get("required", [])),
    }


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_has_a_sync_and_an_async_method(method: str, path: str) -> None:
    name = BY_OPERATION.get((method, path))
    assert name is not None, f"{method} {path}: no client method (servekit_client/_routes.py)"
    sync, async_ = _methods(name)
    assert sync is not None, f"{method} {path}: Client has no {name}"
    assert async_ is not None, f"{method} {path}: AsyncClient has no {name}"


def test_every_route_of_the_client_is_in_the_document() -> None:
    missing = [
        f"{r.method} {r.path}" for r in ROUTES.values() if (r.method, r.path) not in OPERATIONS
    ]
    assert missing == []


def test_the_document_has_the_operations_the_client_covers() -> None:
    # The list above is not empty by accident: the known routes are in it.
    assert ("POST", "/v1/search") in OPERATIONS
    assert ("POST", "/admin/v1/tenants/{tenant_id}/keys/{key_id}/rotate") in OPERATIONS
    assert len(OPERATIONS) == len(ROUTES)


def _documented_inputs(method: str, path: str) -> set[str]:
    op = _operation(method, path)
    names = set()
    for param in op.get("parameters", []):
        name = param["name"]
        if param["in"] == "header":
            name = name.lower().removeprefix("x-").replace("-", "_")
        names.add(name)
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    body = schema.get("schema")
    if body:
        options = body.get("anyOf", [body])
        for option in options:
            names |= set(_deref(option).get("properties", {}))
    return names


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_methods_take_every_documented_field_and_parameter(name: str) -> None:
    route = ROUTES[name]
    documented = _documented_inputs(route.method, route.path)
    sync, _ = _methods(name)
    taken = set(inspect.signature(sync).parameters) - {"self"}
    assert documented - taken == set(), f"{name}: not taken"
    assert taken - documented - EXTRA_PARAMETERS == set(), f"{name}: not in the document"


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_sync_and_async_methods_are_the_same_api(name: str) -> None:
    sync, async_ = _methods(name)
    assert inspect.iscoroutinefunction(async_)
    assert not inspect.iscoroutinefunction(sync)
    assert inspect.signature(sync) == inspect.signature(async_)
    assert inspect.getdoc(sync) == inspect.getdoc(async_)


def _success(method: str, path: str) -> dict[str, Any]:
    responses = _operation(method, path)["responses"]
    code = min(c for c in responses if c.startswith("2"))
    schema: dict[str, Any] = (
        responses[code].get("content", {}).get("application/json", {}).get("schema", {})
    )
    return schema


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_each_response_type_is_the_schema_the_document_names(name: str) -> None:
    route = ROUTES[name]
    documented = _success(route.method, route.path)
    response = route.response
    if documented.get("type") == "array":
        assert get_origin(response) is list, f"{name}: the document answers a list"
        (response,) = get_args(response)
        documented = documented["items"]
    assert get_origin(response) is None, f"{name}: the document answers no list"
    want = documented.get("$ref", "").rsplit("/", 1)[-1] or None
    assert response.openapi_schema == want, (
        f"{name}: {response.__name__} names schema {response.openapi_schema!r}, "
        f"the document answers {want!r}"
    )


@pytest.mark.parametrize("name", TYPED)
def test_each_model_has_the_fields_and_types_of_its_schema(name: str) -> None:
    cls = MODELS[name]
    assert cls.openapi_schema in SCHEMAS, f"{name}: no schema {cls.openapi_schema} in the document"
    ref_names = {n: c.openapi_schema for n, c in MODELS.items() if c.openapi_schema}
    ours = cls.model_json_schema(ref_template="#/components/schemas/{model}")
    theirs = SCHEMAS[cls.openapi_schema]
    assert _fields(ours, ref_names) == _fields(theirs, {})


def test_the_comparison_sees_a_drift() -> None:
    # A field of the wrong type, a missing field and an optional one made required:
    # each changes what the models' test compares.
    theirs = _fields(SCHEMAS["UpsertOut"], {})
    retyped = json.loads(json.dumps(SCHEMAS["UpsertOut"]))
    retyped["properties"]["seq"] = {"type": "string"}
    assert _fields(retyped, {}) != theirs
    fewer = json.loads(json.dumps(SCHEMAS["UpsertOut"]))
    del fewer["properties"]["seq"]
    assert _fields(fewer, {}) != theirs
    stricter = json.loads(json.dumps(SCHEMAS["EmbeddingData"]))
    stricter["required"].append("object")
    assert _fields(stricter, {}) != _fields(SCHEMAS["EmbeddingData"], {})
