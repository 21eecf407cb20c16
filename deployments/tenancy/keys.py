"""The replica's view of every API key: a verified copy of the registry, refreshed in
the background, so a key check on the request path never waits on the database.

A refresh asks the registry for its generation (one cheap read) and reloads the whole
snapshot only when it changed; a revoked key is refused within `refresh_s` plus one
read. Refreshes run one at a time and a snapshot older than the copy is never loaded,
so the background refresh cannot put back a key a write just revoked. When the registry
cannot be reached, the last good copy keeps serving."""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from logging import Logger

from deployments.tenancy.principal import Principal, operator_principal
from stores.tenants import ApiKey, Registry, Snapshot, Tenant, hash_key, visible_prefix


@dataclass(frozen=True)
class _Entry:
    key_hash: str = field(repr=False)  # never in a log line (see `ApiKey.key_hash`)
    revoked_ts: float  # inf when not revoked
    expires_ts: float  # inf when it never expires
    tenant_id: str
    principal: Principal


def _ts(value: object) -> float:
    return value.timestamp() if value is not None else float("inf")  # type: ignore[attr-defined]


def principal_of(key: ApiKey, tenant: Tenant) -> Principal:
    """What a key of `tenant` may do: within the tenant's limits, and its own."""
    return Principal(
        tenant_id=key.tenant_id,
        key_id=key.id,
        prefix=key.prefix,
        scopes=key.scopes,
        models=key.models,
        may_pin=key.may_pin,
        limits=tenant.limits,
        subject=key.tenant_id,
        key_limits=key.limits,
        expires_at=key.expires_at,
    )


class KeyCache:
    """API key -> `Principal`, from the last snapshot of the registry."""

    def __init__(
        self,
        registry: Registry,
        secret: bytes,
        admin_token: str | None,
        refresh_s: float,
        log: Logger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.secret = secret
        self.refresh_s = refresh_s
        self.log = log
        self.clock = clock
        self._admin_hash = hash_key(secret, admin_token) if admin_token else None
        self._operator = operator_principal()
        self._by_prefix: dict[str, list[_Entry]] = {}
        self._disabled: frozenset[str] = frozenset()
        self.generation = -1
        self.loaded_at = 0.0  # monotonic time of the last successful check
        self._failing = False
        # One refresh at a time: the background one and a write's own must not
        # interleave (an older snapshot loaded last would undo a revocation).
        self._refreshing = threading.Lock()

    def lookup(self, token: str) -> Principal | None:
        """The caller a bearer token stands for, or None (unknown, expired, revoked,
        disabled tenant). Hashes compare in constant time."""
        prefix = visible_prefix(token)
        digest = hash_key(self.secret, token)
        if prefix is None:
            if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
                return self._operator
            return None
        now = self.clock()
        for entry in self._by_prefix.get(prefix, ()):
            if (
                hmac.compare_digest(entry.key_hash, digest)
                and now < entry.revoked_ts
                and now < entry.expires_ts
                and entry.tenant_id not in self._disabled
            ):
                return entry.principal
        return None

    def refresh(self) -> bool:
        """Reload when the registry changed (blocking; one at a time). True when it
        reloaded."""
        with self._refreshing:
            generation = self.registry.generation()
            changed = generation != self.generation
            if changed:
                if generation < self.generation:
                    # Generations only grow: this is another registry (a restored
                    # database), whose snapshot replaces the copy whatever its number.
                    self.log.warning(
                        "key registry generation went back from %d to %d; reloading",
                        self.generation,
                        generation,
                    )
                    self.generation = -1
                live_at = datetime.fromtimestamp(self.clock(), UTC)
                self.load(self.registry.snapshot(live_at))
            self.loaded_at = time.monotonic()
            return changed

    def load(self, snapshot: Snapshot) -> None:
        """Replace the copy with `snapshot` (one assignment each: readers never see a mix);
        a snapshot not newer than the copy is ignored. Keys revoked or expired are not
        kept: memory follows the live keys, not every key ever issued."""
        if snapshot.generation <= self.generation:
            return
        by_prefix: dict[str, list[_Entry]] = {}
        now = self.clock()
        for key in snapshot.keys:
            tenant = snapshot.tenants.get(key.tenant_id)
            revoked_ts, expires_ts = _ts(key.revoked_at), _ts(key.expires_at)
            if tenant is None or min(revoked_ts, expires_ts) <= now:
                continue  # a key revoked or expired stays so: nothing to keep of it
            entry = _Entry(
                key.key_hash,
                revoked_ts,
                expires_ts,
                key.tenant_id,
                principal_of(key, tenant),
            )
            by_prefix.setdefault(key.prefix, []).append(entry)
        self._disabled = frozenset(t.id for t in snapshot.tenants.values() if t.disabled)
        self._by_prefix = by_prefix
        self.generation = snapshot.generation

    async def run(self) -> None:
        """Refresh every `refresh_s` until cancelled; keep the last copy on failure."""
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh_now()

    async def refresh_now(self) -> None:
        """One refresh off the event loop; failures are logged once per outage."""
        try:
            await asyncio.to_thread(self.refresh)
        except Exception as e:
            if not self._failing:
                self.log.warning(
                    "key registry unreachable; serving the keys known at generation %d",
                    self.generation,
                    extra={"fields": {"error": type(e).__name__}},
                )
            self._failing = True
            return
        if self._failing:
            self.log.info("key registry reachable again")
        self._failing = False
