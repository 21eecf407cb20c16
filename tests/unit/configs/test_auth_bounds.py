"""`args.auth` holds what the tenant registry can store, with the admin API's bounds:
a value past them fails the file's validation, not a key rotation or a tenant's creation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from configs.schema import (
    MAX_KEY_LIFETIME_S,
    MAX_MONTHLY_TEXTS,
    MAX_REQUESTS_PER_S,
    MAX_TEXTS_PER_S,
    MIN_RATE_PER_S,
    AuthSettings,
    TenantLimits,
)
from deployments.http.admin import LimitsBody, RotateBody


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e12, MAX_KEY_LIFETIME_S + 1])
def test_rotation_overlap_past_the_bound_is_refused(value: float) -> None:
    with pytest.raises(ValidationError) as caught:
        AuthSettings.model_validate({"rotation_overlap_s": value})
    (error,) = caught.value.errors(include_input=False)
    assert error["loc"] == ("rotation_overlap_s",)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("monthly_texts", 10**20),
        ("monthly_texts", 1e18),
        ("monthly_texts", MAX_MONTHLY_TEXTS + 1),
        ("requests_per_s", math.inf),
        ("requests_per_s", math.nan),
        ("requests_per_s", MAX_REQUESTS_PER_S * 2),
        ("texts_per_s", math.inf),
        ("texts_per_s", MAX_TEXTS_PER_S * 2),
        ("requests_per_s", 1e-310),
        ("requests_per_s", 0),
        ("texts_per_s", MIN_RATE_PER_S / 2),
    ],
)
def test_default_limits_past_the_bounds_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        AuthSettings.model_validate({"default_limits": {field: value}})
    (error,) = caught.value.errors(include_input=False)
    assert error["loc"] == ("default_limits", field)


def test_the_bounds_themselves_are_accepted() -> None:
    auth = AuthSettings.model_validate(
        {
            "rotation_overlap_s": MAX_KEY_LIFETIME_S,
            "default_limits": {
                "requests_per_s": MAX_REQUESTS_PER_S,
                "texts_per_s": MAX_TEXTS_PER_S,
                "monthly_texts": MAX_MONTHLY_TEXTS,
            },
        }
    )
    assert auth.default_limits.monthly_texts == MAX_MONTHLY_TEXTS
    slowest = TenantLimits.model_validate(
        {"requests_per_s": MIN_RATE_PER_S, "texts_per_s": MIN_RATE_PER_S}
    )
    assert slowest.requests_per_s == slowest.texts_per_s == MIN_RATE_PER_S


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requests_per_s", MAX_REQUESTS_PER_S),
        ("requests_per_s", MAX_REQUESTS_PER_S * 1.01),
        ("texts_per_s", MAX_TEXTS_PER_S),
        ("texts_per_s", MAX_TEXTS_PER_S * 1.01),
        ("monthly_texts", MAX_MONTHLY_TEXTS),
        ("monthly_texts", MAX_MONTHLY_TEXTS + 1),
        ("monthly_texts", 0),
        ("texts_per_s", math.inf),
        ("requests_per_s", MIN_RATE_PER_S),
        ("requests_per_s", 1e-310),
        ("texts_per_s", MIN_RATE_PER_S),
        ("texts_per_s", MIN_RATE_PER_S * 0.99),
    ],
)
def test_file_and_admin_api_agree_on_limits(field: str, value: Any) -> None:
    assert _accepts(TenantLimits, {field: value}) == _accepts(LimitsBody, {field: value})


@pytest.mark.parametrize("value", [0, MAX_KEY_LIFETIME_S, MAX_KEY_LIFETIME_S + 1, math.inf])
def test_file_and_admin_api_agree_on_rotation_overlap(value: float) -> None:
    assert _accepts(AuthSettings, {"rotation_overlap_s": value}) == _accepts(
        RotateBody, {"overlap_s": value}
    )


def _accepts(model: Any, data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True
