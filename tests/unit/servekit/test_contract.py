"""The API contract: the committed document is the one the code serves, and a change to
/v1 that breaks callers is caught unless declared."""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from servekit import contract


@pytest.fixture(scope="module")
def current() -> dict[str, Any]:
    return contract.generate()


def test_the_committed_contract_is_current_and_only_grew() -> None:
    assert contract.check() == []


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


def _response_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    op = doc["paths"][path][method]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    return _schema(doc, ref.rsplit("/", 1)[-1])


def _request_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    op = doc["paths"][path][method]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return _schema(doc, ref.rsplit("/", 1)[-1])


def test_removing_a_response_field_is_breaking(current: dict[str, Any]) -> None:
    new = copy.deepcopy(current)
    response = _response_schema(new, "/v1/search", "post")
    field = sorted(response["properties"])[0]
    del response["properties"][field]
    found = contract.breaking(current, new)
    assert any(f"POST /v1/search 200.{field}: response field removed" in p for p in found), found


def test_removed_paths_new_required_fields_and_narrowed_types_are_breaking(
    current: dict[str, Any],
) -> None:
    new = copy.deepcopy(current)
    del new["paths"]["/v1/usage"]
    body = _request_schema(new, "/v1/search", "post")
    body.setdefault("required", []).append("shiny")
    body["properties"]["shiny"] = {"type": "string"}
    body["properties"]["query"] = {**body["properties"]["query"], "maxLength": 3}
    found = contract.breaking(current, new)
    assert "/v1/usage: path removed" in found
    assert any(p.endswith("request.shiny: new required field") for p in found), found
    assert any("request.query: maxLength tightened to 3" in p for p in found), found


def test_a_bound_of_a_nullable_field_is_checked_in_its_alternative(
    current: dict[str, Any],
) -> None:
    """A field that may be null is `anyOf: [{number, bounds}, {null}]`: its bounds were
    not compared, so tightened ones passed unseen."""
    new = copy.deepcopy(current)
    limits = _schema(new, "LimitsBody")["properties"]
    number = next(o for o in limits["requests_per_s"]["anyOf"] if o.get("type") == "number")
    number["minimum"] = 5.0
    number["maximum"] = 10.0
    found = contract.breaking(current, new)
    assert any(
        p.startswith("PATCH /admin/v1/tenants/{tenant_id} request.limits.requests_per_s: "
                     "minimum tightened to 5.0") for p in found
    ), found  # fmt: skip
    assert any("request.limits.requests_per_s: maximum tightened to 10.0" in p for p in found)
    loosened = copy.deepcopy(current)
    number = next(
        o
        for o in _schema(loosened, "LimitsBody")["properties"]["requests_per_s"]["anyOf"]
        if o.get("type") == "number"
    )
    number["maximum"] *= 10
    assert contract.breaking(current, loosened) == []


def test_growth_is_not_breaking(current: dict[str, Any]) -> None:
    new = copy.deepcopy(current)
    new["paths"]["/v1/new-thing"] = {"get": {"responses": {"200": {"description": "ok"}}}}
    body = _request_schema(new, "/v1/search", "post")
    body["properties"]["optional_extra"] = {"type": "boolean"}
    response = _response_schema(new, "/v1/search", "post")
    response["properties"]["more"] = {"type": "string"}
    assert contract.breaking(current, new) == []
    # /v2 (the inference protocol) and unversioned paths are not /v1's contract.
    del new["paths"]["/v2/health/live"]
    assert contract.breaking(current, new) == []


def test_a_declared_breaking_change_passes(tmp_path: Path) -> None:
    problems = ["DELETE /v1/thing: operation removed", "/v1/other: path removed"]
    declared = tmp_path / "changes.yaml"
    declared.write_text(
        "breaking:\n  - change: 'DELETE /v1/thing'\n    why: replaced by PUT with state\n"
    )
    changes = contract.declared(declared)
    assert contract.undeclared(problems, changes) == ["/v1/other: path removed"]
    declared.write_text("breaking:\n  - change: '/v1/x'\n")
    with pytest.raises(ValueError, match="needs 'change' and 'why'"):
        contract.declared(declared)


def test_the_document_is_written_in_one_stable_form(current: dict[str, Any]) -> None:
    text = contract.render(current)
    assert text == contract.render(json.loads(text))
    assert text.endswith("\n")


TODAY = date(2027, 1, 1)


def _deprecate(node: dict[str, Any], sunset: str | None) -> None:
    node["deprecated"] = True
    node["x-deprecation"] = {"on": "2026-06-01", **({"sunset": sunset} if sunset else {})}


def test_deprecating_a_route_or_a_field_is_not_breaking(current: dict[str, Any]) -> None:
    new = copy.deepcopy(current)
    _deprecate(new["paths"]["/v1/usage"]["get"], "2027-07-01")
    response = _response_schema(new, "/v1/search", "post")
    _deprecate(response["properties"][sorted(response["properties"])[0]], "2027-07-01")
    assert contract.breaking(current, new, TODAY) == []


def test_removing_a_deprecated_route_is_breaking_until_its_sunset(
    current: dict[str, Any],
) -> None:
    released = copy.deepcopy(current)
    _deprecate(released["paths"]["/v1/usage"]["get"], "2027-07-01")
    _deprecate(released["paths"]["/v1/catalogs"]["get"], None)
    new = copy.deepcopy(released)
    del new["paths"]["/v1/usage"], new["paths"]["/v1/catalogs"]["get"]
    assert contract.breaking(released, new, TODAY) == [
        "GET /v1/catalogs: operation removed (deprecated, no sunset)",
        "/v1/usage: path removed (before its sunset 2027-07-01)",
    ]
    after = contract.breaking(released, new, date(2027, 7, 1))
    assert after == ["GET /v1/catalogs: operation removed (deprecated, no sunset)"]
    # Declared, a removal before the sunset passes (the declaration names its start).
    declared = [{"change": "/v1/usage: path removed", "why": "moved to /v1/usage/days"}]
    found = contract.breaking(released, new, TODAY)
    assert contract.undeclared(found, declared) == [found[0]]


def test_removing_a_deprecated_field_is_breaking_until_its_sunset(
    current: dict[str, Any],
) -> None:
    released = copy.deepcopy(current)
    response = _response_schema(released, "/v1/search", "post")
    field = sorted(response["properties"])[0]
    _deprecate(response["properties"][field], "2027-07-01")
    new = copy.deepcopy(released)
    del _response_schema(new, "/v1/search", "post")["properties"][field]
    assert contract.breaking(released, new, TODAY) == [
        f"POST /v1/search 200.{field}: response field removed (before its sunset 2027-07-01)"
    ]
    assert contract.breaking(released, new, date(2027, 7, 2)) == []


def test_a_removed_request_field_and_an_earlier_sunset_are_breaking(
    current: dict[str, Any],
) -> None:
    released = copy.deepcopy(current)
    _deprecate(released["paths"]["/v1/usage"]["get"], "2027-07-01")
    new = copy.deepcopy(released)
    new["paths"]["/v1/usage"]["get"]["x-deprecation"]["sunset"] = "2027-03-01"
    del _request_schema(new, "/v1/search", "post")["properties"]["hybrid"]
    assert contract.breaking(released, new, TODAY) == [
        "POST /v1/search request.hybrid: request field removed",
        "GET /v1/usage: sunset moved earlier, to 2027-03-01",
    ]
