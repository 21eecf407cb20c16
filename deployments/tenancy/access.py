"""What a replica needs to serve tenants: the key cache, admission (rate limits and
quotas), usage metering and the registry, built once from settings and secrets.

Settings outside `serve_config.yaml` come from the environment (the same in every Ray
process): `SERVEKIT_REDIS_URL` selects the shared limiter (else each replica limits
alone); the registry DSN, HMAC secret, admin credential and Redis password are secrets
(`stores/secrets.py`). With `SERVEKIT_ENV=production`, auth off or a development secret
refuses to start."""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass, field
from logging import Logger

from configs.schema import AuthSettings
from configs.settings import PROJECT_ROOT
from deployments.tenancy.admission import Admission
from deployments.tenancy.keys import KeyCache
from deployments.tenancy.usage import UsageMeter
from stores.ratelimit import Limiter
from stores.secrets import Secrets, load_secrets
from stores.tenants import Registry

DEV_SECRET_PREFIX = "dev-"  # secrets generated for `make serve`; refused in production
REDIS_URL_ENV = "SERVEKIT_REDIS_URL"
PRODUCTION_ENV = "SERVEKIT_ENV"


class UnsafeSettings(RuntimeError):
    """A production process configured in a way that must not serve."""


def default_registry_url() -> str:
    """The embedded registry of a checkout: SQLite under `.servekit/`."""
    return f"sqlite:///{PROJECT_ROOT / '.servekit' / 'registry.db'}"


def is_production(env: dict[str, str] | None = None) -> bool:
    """Whether `SERVEKIT_ENV` says production."""
    return (env or dict(os.environ)).get(PRODUCTION_ENV, "").lower() == "production"


def check_production(settings: AuthSettings, secrets: Secrets) -> None:
    """Refuse, in production, auth off, a missing secret or a development one."""
    if not is_production():
        return
    if not settings.enabled:
        raise UnsafeSettings("SERVEKIT_ENV=production: args.auth.enabled must be true")
    for name in ("hmac_secret", "admin_token"):
        value = secrets.require(name)
        if value.startswith(DEV_SECRET_PREFIX) or len(value) < 32:
            raise UnsafeSettings(
                f"SERVEKIT_ENV=production: secret {name} is a development secret "
                "(or shorter than 32 characters)"
            )
    if secrets.get("registry_dsn") is None:
        raise UnsafeSettings("SERVEKIT_ENV=production: secret registry_dsn is required")


def open_limiter(secrets: Secrets, registry: Registry) -> Limiter:
    """Redis when `SERVEKIT_REDIS_URL` is set, else this process's buckets, with the
    monthly counts kept in the registry (so a quota holds across restarts and replicas)."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        from stores.ratelimit_redis import RedisLimiter

        return RedisLimiter(url, password=secrets.get("redis_password"))
    from stores.ratelimit_embedded import EmbeddedLimiter

    return EmbeddedLimiter(counts=registry)


def registry_url(secrets: Secrets) -> str:
    """The database of tenants and catalogs: the `registry_dsn` secret, else the
    embedded one."""
    return secrets.get("registry_dsn") or default_registry_url()


def open_registry_from(secrets: Secrets) -> Registry:
    """The registry named by the `registry_dsn` secret, else the embedded one."""
    from stores.registry_sql import open_registry

    return open_registry(registry_url(secrets))


@dataclass
class Access:
    """Keys, admission, usage and the registry of one replica."""

    settings: AuthSettings
    registry: Registry
    keys: KeyCache
    admission: Admission
    usage: UsageMeter
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def open(cls, settings: AuthSettings, log: Logger) -> Access:
        """Read secrets, check production rules, load every key once (blocking)."""
        secrets = load_secrets()
        check_production(settings, secrets)
        registry = open_registry_from(secrets)
        keys = KeyCache(
            registry,
            secrets.require("hmac_secret").encode("utf-8"),
            secrets.get("admin_token"),
            settings.refresh_s,
            log,
        )
        keys.refresh()
        admission = Admission(open_limiter(secrets, registry), settings.limiter_fail_open, log)
        return cls(
            settings, registry, keys, admission, UsageMeter(registry, settings.usage_flush_s, log)
        )

    @functools.cached_property
    def exempt_paths(self) -> frozenset[str]:
        """Paths answered without a key."""
        return frozenset(self.settings.exempt_paths)

    def start(self) -> None:
        """Start the background refresh and flush (once, on the replica's loop)."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self.keys.run()),
                asyncio.create_task(self.usage.run()),
            ]

    async def close(self) -> None:
        """Write pending usage, stop the tasks, release connections."""
        for task in self._tasks:
            task.cancel()
        await self.usage.flush()
        await self.admission.limiter.close()
        await asyncio.to_thread(self.registry.close)
