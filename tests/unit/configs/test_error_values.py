"""Validation errors of `args` and live config name the field, never the value: a secret
typed into the wrong place must not reach Serve's status or logs through them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from configs.features import FeatureSettings
from configs.schema import AppArgs, IngressLiveConfig

SECRET = "sk-not-for-any-log-0123456789"


@pytest.mark.parametrize(
    ("model", "data", "where"),
    [
        (AppArgs, {"models": {}, "auth": {"admin_token": SECRET}}, "auth.admin_token"),
        (AppArgs, {"models": {}, "auth": {"refresh_s": SECRET}}, "auth.refresh_s"),
        (AppArgs, {"models": {}, "features": {"token": SECRET}}, "features.token"),
        (FeatureSettings, {"token": SECRET}, "token"),
        (IngressLiveConfig, {"traffic": {}, "cache": {"password": SECRET}}, "cache.password"),
    ],
)
def test_errors_name_the_field_never_the_value(
    model: Any, data: dict[str, Any], where: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    assert SECRET not in str(caught.value)
    assert where in str(caught.value)
