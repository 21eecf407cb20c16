"""Credentials of a local instance: development secrets and a development tenant for
`servekit serve` (so `make serve` works with auth on and nothing set by hand), and the
operator credential the command line sends to the admin API and `servekit status`.

Development secrets start with `dev-`; a process with `SERVEKIT_ENV=production`
refuses them. Everything lives under `.servekit/` (git-ignored), files mode 0600.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from deployments.tenancy.access import (
    DEV_SECRET_PREFIX,
    UnsafeSettings,
    default_registry_url,
    is_production,
)
from deployments.tenancy.keys import KeyCache
from servekit.instance import STATE_DIR
from stores.secrets import load_secrets
from stores.tenants import SCOPES, RateLimits, issue_key

SECRETS_DIR = STATE_DIR / "secrets"
DEV_KEY_FILE = STATE_DIR / "dev-api-key"
DEV_TENANT = "dev"
GENERATED = ("hmac_secret", "admin_token")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def prepare_local(auth_enabled: bool) -> list[str]:
    """Before a local instance starts: development secrets (unless configured) and,
    unless a registry is configured, the embedded one with a development tenant and
    key. Sets this process's environment, which every Ray process inherits. Returns the
    lines to print."""
    if not auth_enabled:
        return ["auth is off (args.auth.enabled: false): every caller is served"]
    found = load_secrets()
    if found.get("hmac_secret") is None:
        if is_production():
            raise UnsafeSettings("SERVEKIT_ENV=production: secret hmac_secret is not set")
        for name in GENERATED:
            path = SECRETS_DIR / name
            if not path.is_file():
                _write_private(path, DEV_SECRET_PREFIX + secrets.token_urlsafe(32))
        os.environ.setdefault("SERVEKIT_SECRETS_DIR", str(SECRETS_DIR))
        found = load_secrets()
    if found.get("registry_dsn") is not None:
        return []  # a configured registry: its tenants are the operator's business
    if is_production():
        raise UnsafeSettings("SERVEKIT_ENV=production: secret registry_dsn is not set")
    os.environ["SERVEKIT_REGISTRY_DSN"] = default_registry_url()
    found = load_secrets()
    key = _dev_key(found.require("hmac_secret").encode("utf-8"), found.require("registry_dsn"))
    lines = [
        f"API key of the development tenant: {_relative(DEV_KEY_FILE)}",
        f"  export SERVEKIT_API_KEY=$(cat {_relative(DEV_KEY_FILE)})",
    ]
    if key is not None:
        lines.insert(0, "created a development tenant and key")
    return lines


def _dev_key(secret: bytes, dsn: str) -> str | None:
    """Make the development tenant's key unless the saved one still works; the new
    key when one was made."""
    from stores.registry_sql import open_registry

    registry = open_registry(dsn)
    try:
        if DEV_KEY_FILE.is_file():
            cache = KeyCache(registry, secret, None, 1.0, logging.getLogger(__name__))
            cache.refresh()
            if cache.lookup(DEV_KEY_FILE.read_text().strip()) is not None:
                return None
        if registry.get_tenant(DEV_TENANT) is None:
            registry.create_tenant("Development", RateLimits(), DEV_TENANT)
        key, _ = issue_key(
            registry,
            secret,
            DEV_TENANT,
            name="development",
            scopes=frozenset(SCOPES),
            may_pin=True,
            now=datetime.now(UTC),
        )
        _write_private(DEV_KEY_FILE, key + "\n")
        return key
    finally:
        registry.close()


def operator_token() -> str | None:
    """The bootstrap admin credential: from the configured secrets, else the one a
    local `servekit serve` generated."""
    token = load_secrets().get("admin_token")
    if token is None and (SECRETS_DIR / "admin_token").is_file():
        token = (SECRETS_DIR / "admin_token").read_text().strip()
    return token


def operator_headers() -> dict[str, str]:
    """`Authorization` for the admin API, when an operator credential is known."""
    token = operator_token()
    return {"Authorization": f"Bearer {token}"} if token else {}
