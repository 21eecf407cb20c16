"""`servekit serve`'s development credentials: made once, reused, refused in production."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from deployments.tenancy.access import UnsafeSettings
from deployments.tenancy.keys import KeyCache
from servekit import credentials
from stores.registry_sql import open_registry

ENV = (
    "SERVEKIT_HMAC_SECRET",
    "SERVEKIT_ADMIN_TOKEN",
    "SERVEKIT_REGISTRY_DSN",
    "SERVEKIT_SECRETS_DIR",
    "SERVEKIT_AWS_SECRET_ID",
    "SERVEKIT_ENV",
)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(credentials, "SECRETS_DIR", tmp_path / "secrets")
    monkeypatch.setattr(credentials, "DEV_KEY_FILE", tmp_path / "dev-api-key")
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setattr(credentials, "default_registry_url", lambda: url)
    return tmp_path


def _valid(state: Path, key: str) -> bool:
    secret = (state / "secrets" / "hmac_secret").read_text().encode()
    registry = open_registry(f"sqlite:///{state / 'registry.db'}")
    cache = KeyCache(registry, secret, None, 1.0, logging.getLogger("t"))
    cache.refresh()
    found = cache.lookup(key)
    registry.close()
    return found is not None and found.tenant_id == credentials.DEV_TENANT


def test_first_start_makes_secrets_a_tenant_and_a_key_then_reuses_them(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = credentials.prepare_local(auth_enabled=True)
    assert lines[0] == "created a development tenant and key"
    key = (state / "dev-api-key").read_text().strip()
    assert _valid(state, key)
    for name in ("hmac_secret", "admin_token"):
        path = state / "secrets" / name
        assert path.read_text().startswith("dev-")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "dev-api-key").stat().st_mode) == 0o600
    assert all(key not in line for line in lines)  # the key is in the file, not printed
    for name in ENV:  # a new process: only the files remain
        monkeypatch.delenv(name, raising=False)
    again = credentials.prepare_local(auth_enabled=True)
    assert again[0] != "created a development tenant and key"
    assert (state / "dev-api-key").read_text().strip() == key
    assert credentials.operator_token() == (state / "secrets" / "admin_token").read_text()


def test_a_configured_registry_gets_no_development_tenant(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVEKIT_HMAC_SECRET", "x" * 40)
    monkeypatch.setenv("SERVEKIT_REGISTRY_DSN", f"sqlite:///{state / 'prod.db'}")
    assert credentials.prepare_local(auth_enabled=True) == []
    assert not (state / "dev-api-key").exists()


def test_production_refuses_missing_secrets(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_ENV", "production")
    with pytest.raises(UnsafeSettings, match="hmac_secret"):
        credentials.prepare_local(auth_enabled=True)
    assert not (state / "secrets").exists()


def test_auth_off_says_so(state: Path) -> None:
    assert "auth is off" in credentials.prepare_local(auth_enabled=False)[0]
