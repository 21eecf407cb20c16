"""Request bodies refused before anything is written: every value a store could not
hold gets a 400 naming its field, never a 500 from the store or the date arithmetic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from deployments.errors import from_validation_error, request_invalid
from deployments.http.admin import KeyCreate, LimitsBody, RotateBody, TenantCreate
from deployments.http.events_routes import EventIn
from deployments.http.recommend_routes import RecommendBody
from deployments.http.search_routes import ItemIn, SearchBody
from stores.catalog import ATTRIBUTE_KINDS, NOT_UNICODE, Item, item_problem


def _refusal(model: type[BaseModel], raw: str, prefix: str = "") -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(json.loads(raw))
    return from_validation_error(caught.value, prefix).message


@pytest.mark.parametrize(
    ("model", "raw", "field"),
    [
        (RotateBody, '{"overlap_s": 1e400}', "overlap_s"),
        (RotateBody, '{"overlap_s": Infinity}', "overlap_s"),
        (RotateBody, '{"overlap_s": NaN}', "overlap_s"),
        (RotateBody, '{"overlap_s": 400000000000}', "overlap_s"),
        (KeyCreate, '{"expires_in_s": 400000000000}', "expires_in_s"),
        (KeyCreate, '{"expires_in_s": 1000000000000000000}', "expires_in_s"),
        (KeyCreate, '{"limits": {"monthly_texts": 1' + "0" * 22 + '}}', "limits.monthly_texts"),
        (LimitsBody, '{"requests_per_s": NaN}', "requests_per_s"),
        (TenantCreate, '{"name": "x", "limits": {"monthly_texts": 9223372036854775808}}',
         "limits.monthly_texts"),
    ],
)  # fmt: skip
def test_admin_values_past_what_is_storable_are_named(
    model: type[BaseModel], raw: str, field: str
) -> None:
    assert _refusal(model, raw).startswith(f"{field}: ")


def test_admin_values_inside_the_bounds_pass() -> None:
    assert RotateBody.model_validate({"overlap_s": 86400.5}).overlap_s == 86400.5
    assert KeyCreate.model_validate({"expires_in_s": 10 * 365 * 86400}).expires_in_s
    limits = LimitsBody.model_validate({"monthly_texts": 10**12})
    assert limits.monthly_texts == 10**12


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        *((v, ATTRIBUTE_KINDS) for v in
          ["NaN", "Infinity", "-Infinity", "1e400", '{"a": 1}', "[1, 2]", "null"]),
        # A lone surrogate: stored, it failed every answer holding the item (500).
        (r'"\ud800"', NOT_UNICODE),
        (r'"caf\udc00e"', NOT_UNICODE),
        (r'["x", "x\udc00"]', NOT_UNICODE),
    ],
)  # fmt: skip
def test_an_attribute_no_store_can_hold_is_named_once(value: str, problem: str) -> None:
    raw = f'{{"id": "x", "text": {{"t": "a"}}, "attributes": {{"price": {value}}}}}'
    assert _refusal(ItemIn, raw, "items.0.") == f"items.0.attributes.price: {problem}"


def test_a_valid_unicode_attribute_passes() -> None:
    raw = r'{"id": "x", "text": {"t": "a"}, "attributes": {"c": "\ud83d\ude00 caf\u00e9"}}'
    assert ItemIn.model_validate(json.loads(raw)).attributes == {"c": "\U0001f600 café"}


def test_an_item_from_a_file_with_a_lone_surrogate_is_named() -> None:
    """The same rule for items that come another way (a snapshot, a JSON-lines file)."""
    for item, field in (
        (Item("x", {"t": "a"}, {"tags": ["ok", "\udc00"]}), "attributes.tags"),
        (Item("x\ud800", {"t": "a"}), "id"),
        (Item("x", {"t": "a\ud800"}), "text.t"),
    ):
        assert item_problem(item) == f"{field}: {NOT_UNICODE}"
    assert item_problem(Item("x", {"t": "a"}, {"\ud800": 1})) == (
        f"attributes: names are {NOT_UNICODE}"
    )


def test_every_kind_of_attribute_passes_as_sent() -> None:
    attributes: dict[str, Any] = {"s": "x", "i": 3, "f": 1.5, "b": True, "l": ["a", "b"]}
    item = ItemIn.model_validate({"id": "x", "text": {"t": "a"}, "attributes": attributes})
    assert item.attributes == attributes
    assert type(item.attributes["b"]) is bool
    assert type(item.attributes["i"]) is int


def test_a_body_that_is_not_json_is_named_as_the_body() -> None:
    """FastAPI reports a character offset as the error's location; the 400 says what
    the hot routes say for the same body."""
    errors = [{"type": "json_invalid", "loc": ("body", 11), "msg": "JSON decode error"}]
    assert request_invalid(errors).message == "body: not valid JSON"


def test_a_check_of_our_own_is_said_in_its_words() -> None:
    """A validator's ValueError reaches the caller as its message, naming the field,
    without the validation library's prefix."""
    from pydantic import ValidationError

    from deployments.http.admin import TenantCreate

    try:
        TenantCreate(name="x", id="operator")
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
    assert request_invalid(errors).message == "id: 'operator' is reserved"


@pytest.mark.parametrize("reserved", ["operator", "other", "default"])
def test_reserved_tenant_ids_are_refused(reserved: str) -> None:
    """`default` is where catalogs, events and features are kept while auth is off: a
    tenant by that id, created later, would read all of them."""
    from pydantic import ValidationError

    from deployments.http.admin import TenantCreate

    with pytest.raises(ValidationError) as caught:
        TenantCreate(name="x", id=reserved)
    (error,) = caught.value.errors(include_input=False)
    assert error["loc"] == ("id",)


@pytest.mark.parametrize(
    ("model", "doc", "field"),
    [
        (EventIn, {"user": "u\x00x", "item": "i", "type": "view"}, "user"),
        (EventIn, {"user": "u", "item": "i\x00", "type": "view"}, "item"),
        (ItemIn, {"id": "sku\x001", "text": {"t": "a"}}, "id"),
        (RecommendBody, {"user": "\x00"}, "user"),
        (SearchBody, {"catalog": "c", "query": "q", "user": "a\x00"}, "user"),
        (TenantCreate, {"name": "Acme\x00"}, "name"),
        (KeyCreate, {"name": "k\x00"}, "name"),
        (KeyCreate, {"models": ["minilm", "m\x00"]}, "models.1"),
    ],
)
def test_a_nul_character_in_a_stored_string_is_named(
    model: type[BaseModel], doc: dict[str, Any], field: str
) -> None:
    """PostgreSQL's text cannot hold NUL (SQLite's can): both backends refuse it alike."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(doc)
    message = from_validation_error(caught.value).message
    assert message == f"{field}: must not contain NUL characters"


# A field with a length bound refuses it in the validation library's words.
UNPARSED = "Input should be a valid string, unable to parse raw data as a unicode string"


@pytest.mark.parametrize(
    ("model", "doc", "field", "problem"),
    [
        (EventIn, {"user": "u\ud800", "item": "i", "type": "view"}, "user", UNPARSED),
        (ItemIn, {"id": "sku\udc00", "text": {"t": "a"}}, "id", UNPARSED),
        (TenantCreate, {"name": "Acme\ud800"}, "name", UNPARSED),
        (KeyCreate, {"models": ["minilm", "m\udfff"]}, "models.1", NOT_UNICODE),
    ],
)
def test_a_lone_surrogate_in_a_stored_string_is_named(
    model: type[BaseModel], doc: dict[str, Any], field: str, problem: str
) -> None:
    """FastAPI's JSON reader takes `\\ud800`; no database's UTF-8 writer writes it."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(doc)
    assert from_validation_error(caught.value).message == f"{field}: {problem}"


@pytest.mark.parametrize("value", [".", ".."])
@pytest.mark.parametrize(
    ("model", "doc", "field"),
    [
        (EventIn, {"user": "{}", "item": "i", "type": "view"}, "user"),
        (EventIn, {"user": "u", "item": "{}", "type": "view"}, "item"),
        (ItemIn, {"id": "{}", "text": {"t": "a"}}, "id"),
    ],
)
def test_an_id_a_url_cannot_carry_is_refused_at_write(
    model: type[BaseModel], doc: dict[str, Any], field: str, value: str
) -> None:
    """Written, it could never be read or deleted: every URL library drops the segment."""
    filled = {k: value if v == "{}" else v for k, v in doc.items()}
    with pytest.raises(ValidationError) as caught:
        model.model_validate(filled)
    message = from_validation_error(caught.value).message
    assert message == f"{field}: must not be . or .. (a URL path cannot carry it)"
    ok = {k: "..." if v == "{}" else v for k, v in doc.items()}
    model.model_validate(ok)  # three dots are a name like any


LONG_NAME = "k" * 100_000


def test_a_long_unknown_field_is_named_cut_short() -> None:
    """An unknown key comes back as its first 64 characters, not its whole length."""
    raw = json.dumps({"id": "x", "text": {"t": "a"}, LONG_NAME: 1})
    message = _refusal(ItemIn, raw, "items.0.")
    assert message == f"items.0.{'k' * 64}: unknown field"
    errors = [{"type": "extra_forbidden", "loc": ("body", "items", 0, LONG_NAME), "msg": "x"}]
    assert len(request_invalid(errors).message) < 200


def test_a_long_attribute_name_is_named_cut_short() -> None:
    raw = json.dumps({"id": "x", "text": {"t": "a"}, "attributes": {LONG_NAME: None}})
    assert len(_refusal(ItemIn, raw, "items.0.")) < 200
    problem = item_problem(Item("x", {LONG_NAME: 1}, {LONG_NAME: None}))  # type: ignore[dict-item]
    assert problem == f"text.{'k' * 64}: a string"
    problem = item_problem(Item("x", {"t": "a"}, {LONG_NAME: None}))  # type: ignore[dict-item]
    assert problem == f"attributes.{'k' * 64}: {ATTRIBUTE_KINDS}"
