"""A replica's key checks while the PostgreSQL registry is down, on a real server that
this test stops and starts again."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import pytest

from deployments.tenancy.keys import KeyCache
from stores.registry_sql import open_registry
from stores.tenants import RateLimits, issue_key
from tests.pg_server import PG_BIN, _run, _start, postgres_server

SECRET = b"outage-secret"


def test_known_keys_are_served_while_the_registry_is_down(
    report: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("test.outage")
    with postgres_server() as server:
        registry = open_registry(server.create_database())
        registry.create_tenant("Acme", RateLimits(), "acme")
        now = datetime.now(UTC)
        keys = [
            issue_key(registry, SECRET, "acme", name=f"k{i}", scopes=frozenset({"embed"}), now=now)
            for i in range(2)
        ]
        cache = KeyCache(registry, SECRET, None, 0.2, log)
        cache.refresh()
        data = server.socket_dir / "data"
        # The test server commits asynchronously (synchronous_commit=off): write what is
        # committed to disk first, so the crash below loses the connection, not the data.
        server.checkpoint()
        _run([str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(data)],
             server.socket_dir)  # fmt: skip
        try:
            with caplog.at_level(logging.WARNING, logger="test.outage"):
                started = time.perf_counter()
                asyncio.run(cache.refresh_now())  # fails: logged once, copy kept
                failed_refresh_s = time.perf_counter() - started
                asyncio.run(cache.refresh_now())
            warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
            assert len(warnings) == 1
            lookups, started = 0, time.perf_counter()
            while time.perf_counter() - started < 0.5:
                assert all(cache.lookup(key) is not None for key, _ in keys)
                lookups += len(keys)
            per_lookup_us = (time.perf_counter() - started) / lookups * 1e6
        finally:
            _start(server.socket_dir, data, server.port)
        registry.revoke_key("acme", keys[1][1].id, datetime.now(UTC))
        back = time.perf_counter()
        while cache.lookup(keys[1][0]) is not None and time.perf_counter() - back < 10:
            asyncio.run(cache.refresh_now())
        recovered_s = time.perf_counter() - back
        registry.close()
    assert cache.lookup(keys[1][0]) is None  # the revocation arrived after the outage
    assert cache.lookup(keys[0][0]) is not None
    report.append(
        f"registry down: {lookups} key checks served from the replica's copy "
        f"({per_lookup_us:.1f} us each), a failed refresh took {failed_refresh_s * 1000:.0f} ms; "
        f"after restart a revocation arrived in {recovered_s:.2f} s"
    )
