"""The key cache's refreshes: the background one and a write's own never interleave,
and an older snapshot never replaces a newer copy (a revoked key stays refused)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deployments.tenancy.keys import KeyCache
from stores.registry_sql import SqlRegistry, open_registry
from stores.tenants import RateLimits, Snapshot, issue_key

SECRET = b"unit-test-secret"
LOG = logging.getLogger("test")
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


class HeldRegistry(SqlRegistry):
    """A registry whose next snapshot, once `hold` is set, is read and then held until
    `release` is set: a refresh slow to come back with what it read."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.hold = False
        self.holding = threading.Event()
        self.release = threading.Event()

    def snapshot(self, live_at: datetime | None = None) -> Snapshot:
        snap = super().snapshot(live_at)
        if self.hold:
            self.hold = False
            self.holding.set()
            assert self.release.wait(10)
        return snap


@pytest.fixture
def registry(tmp_path: Path) -> HeldRegistry:
    reg = HeldRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.migrate()
    reg.create_tenant("Acme", RateLimits(), "acme")
    return reg


def _key(registry: SqlRegistry) -> tuple[str, str]:
    key, record = issue_key(
        registry, SECRET, "acme", name="k", scopes=frozenset({"embed"}), now=NOW
    )
    return key, record.id


def test_a_slow_background_refresh_does_not_bring_back_a_revoked_key(
    registry: HeldRegistry,
) -> None:
    cache = KeyCache(registry, SECRET, None, 1.0, LOG, clock=NOW.timestamp)
    cache.refresh()
    _key(registry)  # a change the background refresh is about to load
    key, key_id = _key(registry)
    registry.hold = True
    background = threading.Thread(target=cache.refresh)
    background.start()
    assert registry.holding.wait(10)  # it read the key still live, and is slow
    registry.revoke_key("acme", key_id, NOW)
    after_write = threading.Thread(target=cache.refresh)  # the revoking replica's own
    after_write.start()
    after_write.join(0.5)
    registry.release.set()
    background.join(10)
    after_write.join(10)
    assert cache.lookup(key) is None
    assert cache.generation == registry.generation()


def test_an_older_snapshot_is_not_loaded(registry: HeldRegistry) -> None:
    key, key_id = _key(registry)
    older = registry.snapshot()
    registry.revoke_key("acme", key_id, NOW)
    cache = KeyCache(registry, SECRET, None, 1.0, LOG, clock=NOW.timestamp)
    cache.refresh()
    cache.load(older)
    assert cache.lookup(key) is None
    assert cache.generation == registry.generation()


def test_a_registry_whose_generation_went_back_is_loaded(tmp_path: Path) -> None:
    first = open_registry(f"sqlite:///{tmp_path / 'first.db'}")
    first.create_tenant("Acme", RateLimits(), "acme")
    for _ in range(3):
        _key(first)
    cache = KeyCache(first, SECRET, None, 1.0, LOG, clock=NOW.timestamp)
    cache.refresh()
    restored = open_registry(f"sqlite:///{tmp_path / 'restored.db'}")
    restored.create_tenant("Acme", RateLimits(), "acme")
    key, _ = _key(restored)
    assert restored.generation() < cache.generation
    cache.registry = restored
    assert cache.refresh()
    assert cache.lookup(key) is not None


def test_keys_revoked_or_expired_are_not_kept(registry: HeldRegistry) -> None:
    """They stay so for good: every key ever issued used to be kept by every replica."""
    live, _ = _key(registry)
    revoked, revoked_id = _key(registry)
    expiring, expiring_id = _key(registry)
    registry.revoke_key("acme", revoked_id, NOW)
    registry.expire_key("acme", expiring_id, NOW + timedelta(seconds=30))
    cache = KeyCache(registry, SECRET, None, 1.0, LOG, clock=NOW.timestamp)
    cache.refresh()
    assert cache.lookup(live) is not None
    assert cache.lookup(expiring) is not None  # until it expires
    assert sum(map(len, cache._by_prefix.values())) == 2
    later = KeyCache(
        registry, SECRET, None, 1.0, LOG, clock=(NOW + timedelta(seconds=31)).timestamp
    )
    later.load(registry.snapshot())  # every key (a registry of an earlier release's)
    assert sum(map(len, later._by_prefix.values())) == 1
    cache = later
    assert cache.lookup(revoked) is None
    assert cache.lookup(expiring) is None
