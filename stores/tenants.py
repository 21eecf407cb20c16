"""Tenants, API keys and usage: the values and the registry interface.

A key is shown once, when it is made; the registry keeps only its keyed hash (HMAC-SHA256
with the server secret) and a short visible prefix that support staff can quote.
Backends: `stores/registry_sql.py` (SQLite embedded, PostgreSQL in production).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Literal, Protocol

# What a key may be allowed to call.
SCOPES = ("embed", "search", "catalog", "recommend", "events", "usage", "admin")
KEY_PREFIX = "sk-"
VISIBLE_CHARS = 8  # random characters after `sk-` that are stored in the clear
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
LIMIT_FIELDS = ("requests_per_s", "texts_per_s", "monthly_texts")
# A key's state as listed: only `active` is accepted (see `ApiKey.state`).
KeyState = Literal["active", "tenant_disabled", "expired", "revoked"]


@dataclass(frozen=True)
class RateLimits:
    """Token buckets (per second, burst of one second's worth unless given) and a
    monthly text quota; `None` means unlimited (or, on a key, the tenant's value)."""

    requests_per_s: float | None = None
    texts_per_s: float | None = None
    monthly_texts: int | None = None

    def over(self, base: RateLimits) -> RateLimits:
        """These limits where set, else `base`'s (a key's override over its tenant's)."""
        return RateLimits(
            self.requests_per_s if self.requests_per_s is not None else base.requests_per_s,
            self.texts_per_s if self.texts_per_s is not None else base.texts_per_s,
            self.monthly_texts if self.monthly_texts is not None else base.monthly_texts,
        )

    def changed(self, new: RateLimits, fields: Collection[str] | None = None) -> RateLimits:
        """These limits with `fields` (default: all) taken from `new`, the others kept: a
        change that names one limit leaves the rest as they were. A field of `new` that is
        None removes that limit."""
        if fields is None:
            return new
        unknown = set(fields) - set(LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"unknown limit {sorted(unknown)[0]!r}")
        return replace(self, **{name: getattr(new, name) for name in fields})

    def is_set(self) -> bool:
        """Whether any limit is set."""
        return any(
            v is not None for v in (self.requests_per_s, self.texts_per_s, self.monthly_texts)
        )


@dataclass(frozen=True)
class Tenant:
    """A customer of the platform: owns keys, catalogs, usage."""

    id: str
    name: str
    created_at: datetime
    limits: RateLimits = RateLimits()
    disabled: bool = False


@dataclass(frozen=True)
class ApiKey:
    """One API key as stored: never the key itself, only its keyed hash."""

    id: str
    tenant_id: str
    prefix: str  # `sk-` plus the visible characters: safe to show and log
    # Hex HMAC-SHA256 of the whole key under the server secret; out of the repr, so a
    # key that reaches a log line, an assertion or a traceback's locals never shows it.
    key_hash: str = field(repr=False)
    name: str
    scopes: frozenset[str]
    models: frozenset[str] | None  # None: every model
    may_pin: bool
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    limits: RateLimits = RateLimits()  # overrides of the tenant's limits
    rotated_at: datetime | None = None  # when a replacement was issued (once per key)
    replaced_by: str | None = None  # the id of that replacement (migration 0009 on)

    def live(self, now: datetime) -> bool:
        """Not revoked and not expired at `now` (whatever its tenant)."""
        return self.state(now, tenant_disabled=False) == "active"

    def state(self, now: datetime, tenant_disabled: bool) -> KeyState:
        """What a caller presenting the key gets at `now`: a revoked or expired key
        says so whatever its tenant (that holds for good); a live key of a disabled
        tenant is `tenant_disabled` (refused until the tenant is enabled again); else
        `active`."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "tenant_disabled" if tenant_disabled else "active"


@dataclass(frozen=True)
class UsageRow:
    """Counts for one tenant, model and UTC day (added up across replicas)."""

    tenant_id: str
    model: str
    day: date
    requests: int = 0
    texts: int = 0
    errors: int = 0


# The most keys a tenant holds live (neither revoked nor expired); a rotation may pass
# it for its overlap. Every replica keeps each live key in memory.
MAX_LIVE_KEYS = 10_000


class TooManyKeys(ValueError):
    """A new key past `MAX_LIVE_KEYS` of its tenant."""


@dataclass(frozen=True)
class Snapshot:
    """Every tenant and key, as of `generation` (bumped by every write)."""

    generation: int
    tenants: dict[str, Tenant] = field(default_factory=dict)
    keys: list[ApiKey] = field(default_factory=list)


class Registry(Protocol):
    """Where tenants, keys and usage live. Blocking calls: the serving path never makes
    them on a request; replicas poll `generation()` and reload a `snapshot()`."""

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""

    def create_tenant(self, name: str, limits: RateLimits, tenant_id: str | None = None) -> Tenant:
        """A new tenant; `tenant_id` is generated unless given. Duplicate id: ValueError."""

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        """One tenant, or None."""

    def list_tenants(self) -> list[Tenant]:
        """Every tenant, oldest first."""

    def update_tenant(
        self,
        tenant_id: str,
        limits: RateLimits | None = None,
        disabled: bool | None = None,
        limit_fields: Collection[str] | None = None,
    ) -> Tenant | None:
        """Change a tenant's limits or disabled flag; None when there is no such tenant.
        `limit_fields`: the limits that change (default: all of them); the others keep
        their stored values, read and written in one transaction."""

    def add_key(self, key: ApiKey, max_live: int | None = None) -> None:
        """Store a new key (its tenant must exist: else KeyError); with `max_live`, not
        when its tenant already holds that many live keys (`TooManyKeys`)."""

    def get_key(self, tenant_id: str, key_id: str) -> ApiKey | None:
        """One key of a tenant, or None (also for another tenant's key)."""

    def list_keys(self, tenant_id: str) -> list[ApiKey]:
        """A tenant's keys, revoked and expired included, oldest first."""

    def revoke_key(self, tenant_id: str, key_id: str, at: datetime) -> ApiKey | None:
        """Revoke at `at` (kept if already revoked earlier); None when not the tenant's."""

    def rotate_out(
        self,
        tenant_id: str,
        key_id: str,
        until: datetime,
        now: datetime,
        replaced_by: str | None = None,
    ) -> ApiKey | None:
        """Mark a key rotated at `now` by the key `replaced_by`, valid until `until` at
        the latest, in one step and only once: None when it is not the tenant's key,
        was rotated already, or is revoked."""

    def expire_key(self, tenant_id: str, key_id: str, at: datetime) -> ApiKey | None:
        """Set the expiry to `at` unless it already expires earlier; None when not found."""

    def generation(self) -> int:
        """A number that changes with every write to tenants or keys (cheap to poll)."""

    def snapshot(self, live_at: datetime | None = None) -> Snapshot:
        """Every tenant and key, consistently, with the generation they belong to; with
        `live_at`, without the keys revoked or expired by then (for good)."""

    def add_usage(self, rows: list[UsageRow]) -> None:
        """Add these counts to the stored ones (one transaction, rows may repeat)."""

    def usage(self, tenant_id: str, start: date, end: date) -> list[UsageRow]:
        """A tenant's rows for days in [start, end], by day then model."""

    def add_month_texts(self, counts: dict[tuple[int, str], int]) -> None:
        """Add texts per (month YYYYMM, quota subject) to the stored counts."""

    def month_texts(self, month: int) -> dict[str, int]:
        """Every quota subject's stored count of `month` (YYYYMM)."""

    def close(self) -> None:
        """Release connections."""


def hash_key(secret: bytes, key: str) -> str:
    """The stored form of a key: hex HMAC-SHA256 under the server secret."""
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def new_key() -> tuple[str, str]:
    """(key, visible prefix): `sk-` + 8 visible + 40 secret characters (~206 random bits)."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(VISIBLE_CHARS + 40))
    key = KEY_PREFIX + body
    return key, key[: len(KEY_PREFIX) + VISIBLE_CHARS]


def visible_prefix(key: str) -> str | None:
    """The visible prefix of something shaped like a key, else None."""
    n = len(KEY_PREFIX) + VISIBLE_CHARS
    if not key.startswith(KEY_PREFIX) or len(key) < n + 16 or len(key) > 256:
        return None
    return key[:n]


def new_id(kind: str) -> str:
    """A random id such as `tn_3f9a...` or `key_...`."""
    return f"{kind}_{secrets.token_hex(8)}"


def issue_key(
    registry: Registry,
    secret: bytes,
    tenant_id: str,
    *,
    name: str,
    scopes: frozenset[str],
    models: frozenset[str] | None = None,
    may_pin: bool = False,
    expires_at: datetime | None = None,
    limits: RateLimits = RateLimits(),
    now: datetime,
    max_live: int | None = None,
) -> tuple[str, ApiKey]:
    """Make and store a key for `tenant_id`: (the key, shown once; what is stored); not
    past `max_live` live keys of the tenant (`TooManyKeys`)."""
    unknown = scopes - set(SCOPES)
    if unknown:
        raise ValueError(f"scopes: unknown scope {sorted(unknown)[0]!r}")
    key, prefix = new_key()
    record = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        prefix=prefix,
        key_hash=hash_key(secret, key),
        name=name,
        scopes=scopes,
        models=models,
        may_pin=may_pin,
        created_at=now,
        expires_at=expires_at,
        limits=limits,
    )
    registry.add_key(record, max_live)
    return key, record
