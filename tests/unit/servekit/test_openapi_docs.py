"""Every `/v1` and `/admin/v1` operation of the committed OpenAPI document has examples
of its bodies and its error responses, valid against their own schemas, and the document
is valid OpenAPI."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from openapi_spec_validator import validate

from servekit import contract_docs
from servekit.contract import DOCUMENT


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DOCUMENT.read_text())
    return doc


def test_every_stable_operation_has_examples_and_its_error_responses(
    committed: dict[str, Any],
) -> None:
    problems = contract_docs.undocumented(committed)
    assert problems == [], "api/openapi.json:\n" + "\n".join(problems)


def test_every_example_is_valid_against_its_schema(committed: dict[str, Any]) -> None:
    problems = contract_docs.invalid_examples(committed)
    assert problems == [], "api/openapi.json:\n" + "\n".join(problems)


def test_the_document_is_valid_openapi(committed: dict[str, Any]) -> None:
    validate(committed)


def test_the_stable_operations_were_found(committed: dict[str, Any]) -> None:
    found = {where for where, _ in contract_docs.operations(committed)}
    assert {"POST /v1/embeddings", "POST /v1/search", "POST /admin/v1/tenants"} <= found
    assert not any(" /v2" in where for where in found)


def _op(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    operation: dict[str, Any] = doc["paths"][path][method]
    return operation


def test_a_missing_example_is_named_with_its_route_and_the_helper(
    committed: dict[str, Any],
) -> None:
    doc = copy.deepcopy(committed)
    doc["components"]["schemas"]["SearchBody"].pop("examples")
    doc["components"]["schemas"]["SearchOut"].pop("examples")
    del doc["paths"]["/v1/catalogs"]["get"]["responses"]["200"]["content"]["application/json"][
        "example"
    ]
    problems = contract_docs.undocumented(doc)
    assert problems == [
        "GET /v1/catalogs: the 200 response has no example: give its response model "
        "`json_schema_extra=example(...)`, or pass `responses=responses(..., example=...)` "
        "(deployments/http/route_docs.py)",
        "POST /v1/search: the request body has no example: give its model "
        "`model_config = ConfigDict(json_schema_extra=example(...))` "
        "(deployments/http/route_docs.py)",
        "POST /v1/search: the 200 response has no example: give its response model "
        "`json_schema_extra=example(...)`, or pass `responses=responses(..., example=...)` "
        "(deployments/http/route_docs.py)",
    ]


def test_missing_or_foreign_error_responses_are_named(committed: dict[str, Any]) -> None:
    doc = copy.deepcopy(committed)
    search = _op(doc, "/v1/search", "post")["responses"]
    del search["400"], search["429"]
    # A route added without `responses=`: only FastAPI's own validation error.
    doc["paths"]["/v1/recommendations"] = {
        "post": {
            "requestBody": {"content": {"application/json": {"example": {"user": "u-1"}}}},
            "responses": {
                "200": {"content": {"application/json": {"example": {"data": []}}}},
                "422": {
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/HTTPValidationError"},
                            "example": {},
                        }
                    }
                },
            },
        }
    }
    problems = contract_docs.undocumented(doc)
    helper = "(deployments/http/route_docs.py)"
    declare = "declare `responses=responses(<every error status it answers>)` " + helper
    assert problems == [
        f"POST /v1/recommendations: error responses missing: 400, 401, 403, 429, 500, 503: "
        f"{declare}",
        "POST /v1/recommendations: the 422 response is not the error envelope (ErrorBody): "
        f"declare it with `responses(...)` {helper}",
        f"POST /v1/search: error responses missing: 400, 429: {declare}",
    ]


def test_400_is_required_only_where_a_request_can_be_invalid(
    committed: dict[str, Any],
) -> None:
    doc = copy.deepcopy(committed)
    # `/v1/models/{name}`: a plain string in the path is never refused as invalid.
    assert "400" not in _op(doc, "/v1/models/{name}", "get")["responses"]
    usage = _op(doc, "/v1/usage", "get")["responses"]  # dates in the query can be
    del usage["400"]
    assert contract_docs.undocumented(doc) == [
        "GET /v1/usage: error responses missing: 400: declare "
        "`responses=responses(<every error status it answers>)` "
        "(deployments/http/route_docs.py)"
    ]


def test_an_example_its_schema_refuses_is_named(committed: dict[str, Any]) -> None:
    doc = copy.deepcopy(committed)
    doc["components"]["schemas"]["SearchBody"]["examples"] = [{"catalog": "x", "k": 0}]
    problems = contract_docs.invalid_examples(doc)
    assert len(problems) == 1, problems
    assert problems[0].startswith("POST /v1/search: the request body example is invalid at ")
