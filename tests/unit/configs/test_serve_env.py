"""The Serve settings a local instance runs with, and what wins over them."""

from __future__ import annotations

import os

import pytest

from configs.settings import LOCAL_SERVE_ENV, SERVE_ENV, apply_serve_env

DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def test_a_local_instance_gets_the_shipped_settings_and_a_short_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env: dict[str, str] = {}
    monkeypatch.setattr(os, "environ", env)
    apply_serve_env()
    assert env == {**SERVE_ENV, **LOCAL_SERVE_ENV}
    assert env[DRAIN] == "2"
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_a_value_already_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {DRAIN: "30", "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    monkeypatch.setattr(os, "environ", env)
    apply_serve_env()
    assert env[DRAIN] == "30"
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
