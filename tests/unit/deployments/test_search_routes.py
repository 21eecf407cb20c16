"""The catalog and search routes' bodies: what a PUT of items refuses, and why."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from deployments.errors import from_validation_error
from deployments.http.search_routes import UpsertBody


def _upsert(attributes: dict[str, Any]) -> UpsertBody:
    ok = {"id": "a", "text": {"title": "a"}}
    return UpsertBody.model_validate(
        {"items": [ok, {"id": "b", "text": {"title": "b"}, "attributes": attributes}]}
    )


@pytest.mark.parametrize(
    "value", [10**400, 2**64, 2**53, -(2**53)], ids=["10^400", "2^64", "2^53", "-2^53"]
)
def test_an_integer_past_what_json_readers_hold_is_named(value: int) -> None:
    with pytest.raises(ValidationError) as caught:
        _upsert({"size": 42, "n": value})
    assert from_validation_error(caught.value).message == (
        "items.1.attributes.n: an integer from -9007199254740991 to 9007199254740991"
    )


def test_the_largest_safe_integers_pass() -> None:
    body = _upsert({"top": 2**53 - 1, "bottom": -(2**53 - 1)})
    assert body.items[1].attributes == {"top": 2**53 - 1, "bottom": -(2**53 - 1)}
