"""A tenant admin's key grants, rotates and revokes only keys within its own rights:
scopes, models, the pin right and its own key limits; the operator, anything."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from configs.schema import AuthSettings
from deployments.errors import Forbidden
from deployments.http.admin import KeyCreate, _issue, _now, _revoke, _rotate
from deployments.tenancy.keys import KeyCache, principal_of
from deployments.tenancy.principal import Principal, operator_principal
from stores.registry_sql import SqlRegistry, open_registry
from stores.tenants import RateLimits, issue_key

SECRET = b"unit-test-secret"
T = TypeVar("T")


def _sync(work: Awaitable[T]) -> T:
    return asyncio.run(work)  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path: Path) -> SqlRegistry:
    reg = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tenant("Acme", RateLimits(requests_per_s=100), "acme")
    return reg


def _access(registry: SqlRegistry) -> Any:
    keys = KeyCache(registry, SECRET, None, 60.0, logging.getLogger("test"))
    return SimpleNamespace(registry=registry, keys=keys, settings=AuthSettings())


def _made(registry: SqlRegistry, **rights: Any) -> tuple[str, Principal]:
    """(key id, principal) of a key the operator made."""
    defaults: dict[str, Any] = {"name": "k", "scopes": frozenset({"embed"}), "now": _now()}
    _, record = issue_key(registry, SECRET, "acme", **{**defaults, **rights})
    tenant = registry.get_tenant("acme")
    assert tenant is not None
    return record.id, principal_of(record, tenant)


def _tenant_admin(registry: SqlRegistry) -> Principal:
    """scopes admin + embed, the model minilm, 500 texts/s of its own."""
    _, admin = _made(
        registry,
        scopes=frozenset({"admin", "embed"}),
        models=frozenset({"minilm"}),
        limits=RateLimits(texts_per_s=500),
    )
    return admin


def _refused(registry: SqlRegistry, caller: Principal, body: dict[str, Any]) -> str:
    with pytest.raises(Forbidden) as caught:
        _sync(_issue(_access(registry), caller, "acme", KeyCreate.model_validate(body)))
    return str(caught.value)


def test_a_tenant_admin_cannot_issue_a_key_with_more_rights(registry: SqlRegistry) -> None:
    admin = _tenant_admin(registry)
    every = ["embed", "search", "recommend", "events", "usage"]
    message = _refused(registry, admin, {"scopes": every, "models": None})
    assert "scopes events, recommend, search, usage" in message
    assert "every model" in message
    assert "events" in _refused(registry, admin, {"models": ["minilm"]})  # default scopes
    only_embed = {"scopes": ["embed"]}
    assert "every model" in _refused(registry, admin, only_embed)
    other = _refused(registry, admin, {**only_embed, "models": ["minilm", "e5"]})
    assert "models e5" in other
    assert "minilm" not in other.split("models ", 1)[1]
    faster = {**only_embed, "models": ["minilm"], "limits": {"texts_per_s": 501}}
    assert "limits.texts_per_s 501 (its own: 500)" in _refused(registry, admin, faster)
    pin = {**only_embed, "models": ["minilm"], "may_pin": True}
    assert "may_pin" in _refused(registry, admin, pin)
    assert len(registry.list_keys("acme")) == 1  # nothing issued


def test_a_tenant_admin_issues_within_its_rights_and_its_limits_carry_over(
    registry: SqlRegistry,
) -> None:
    admin = _tenant_admin(registry)
    access = _access(registry)
    body = KeyCreate.model_validate(
        {"scopes": ["embed"], "models": ["minilm"], "limits": {"requests_per_s": 5}}
    )
    made = _sync(_issue(access, admin, "acme", body))
    assert (made["scopes"], made["models"]) == (["embed"], ["minilm"])
    assert made["limits"] == {"requests_per_s": 5, "texts_per_s": 500, "monthly_texts": None}
    slower = {"scopes": ["embed"], "models": ["minilm"], "limits": {"texts_per_s": 20}}
    made = _sync(_issue(access, admin, "acme", KeyCreate.model_validate(slower)))
    assert made["limits"]["texts_per_s"] == 20


def test_the_operator_issues_anything(registry: SqlRegistry) -> None:
    body = KeyCreate.model_validate({"scopes": ["embed", "admin"], "may_pin": True})
    made = _sync(_issue(_access(registry), operator_principal(), "acme", body))
    assert made["models"] is None
    assert made["may_pin"]
    assert made["limits"] == {"requests_per_s": None, "texts_per_s": None, "monthly_texts": None}


def test_a_tenant_admin_rotates_and_revokes_only_keys_within_its_rights(
    registry: SqlRegistry,
) -> None:
    admin = _tenant_admin(registry)
    access = _access(registry)
    wider: dict[str, dict[str, Any]] = {
        "may_pin": {"models": frozenset({"minilm"}), "may_pin": True},
        "every model": {"limits": RateLimits(texts_per_s=10)},
        "limits.texts_per_s unlimited (its own: 500)": {
            "models": frozenset({"minilm"}),
            "limits": RateLimits(),
        },
        "scopes search": {"scopes": frozenset({"search"}), "models": frozenset({"minilm"})},
    }
    for what, rights in wider.items():
        key_id, _ = _made(registry, **{"limits": RateLimits(texts_per_s=10), **rights})
        for attempt in (_rotate, _revoke):
            with pytest.raises(Forbidden) as caught:
                _sync(attempt(access, admin, "acme", key_id))
            assert what in str(caught.value), (what, str(caught.value))
        still = registry.get_key("acme", key_id)
        assert still is not None
        assert (still.revoked_at, still.rotated_at) == (None, None)
    assert len(registry.list_keys("acme")) == 1 + len(wider)  # nothing issued

    narrower, _ = _made(registry, models=frozenset({"minilm"}), limits=RateLimits(texts_per_s=10))
    rotated = _sync(_rotate(access, admin, "acme", narrower, None))
    assert rotated["limits"]["texts_per_s"] == 10
    assert _sync(_revoke(access, admin, "acme", rotated["id"]))["state"] == "revoked"


def test_the_operator_rotates_a_pinning_key(registry: SqlRegistry) -> None:
    key_id, _ = _made(registry, may_pin=True)
    rotated = _sync(_rotate(_access(registry), operator_principal(), "acme", key_id, None))
    assert rotated["may_pin"]


def test_a_tenant_admin_key_issues_no_key_that_outlives_it(registry: SqlRegistry) -> None:
    """A tenant admin key that expires in a day made keys that never expire, and by a
    rotation got the secret of one; keys ending by its own expiry are still issued, and
    it still revokes a longer-lived key."""
    from datetime import timedelta

    _, admin = _made(
        registry,
        scopes=frozenset({"admin", "embed"}),
        models=frozenset({"minilm"}),
        expires_at=_now() + timedelta(days=1),
    )
    body = {"scopes": ["embed"], "models": ["minilm"]}
    assert "expires_in_s: the new key never expires" in _refused(registry, admin, body)
    week = {**body, "expires_in_s": 7 * 86400}
    assert "expires_in_s: the new key expires at" in _refused(registry, admin, week)
    hour = KeyCreate.model_validate({**body, "expires_in_s": 3600})
    made = _sync(_issue(_access(registry), admin, "acme", hour))
    assert made["expires_at"] is not None

    access = _access(registry)
    forever, _ = _made(registry, models=frozenset({"minilm"}))
    with pytest.raises(Forbidden) as caught:
        _sync(_rotate(access, admin, "acme", forever, None))
    assert "may not rotate a key that outlives this API key" in str(caught.value)
    still = registry.get_key("acme", forever)
    assert still is not None
    assert still.rotated_at is None
    assert _sync(_revoke(access, admin, "acme", forever))["state"] == "revoked"
    ops = operator_principal()  # the operator's credential never expires
    _sync(_issue(access, ops, "acme", KeyCreate.model_validate(body)))
