"""The embedding cache. One contract, both stores: the memory tier on an injected clock,
Redis on a real redis-server and real (short) waits. Then what only the memory tier
promises (its byte bound and LRU order), the two tiers together, and Redis failing:
down, stuck, or refusing the password, each a miss and never an error."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tarfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stores.embed_cache import (
    MAX_PENDING_WRITES,
    MEMORY,
    REDIS,
    RETRY_S,
    Cached,
    CacheKey,
    CacheUnavailable,
    EmbedCache,
    EmbedStore,
    MemoryStore,
    cache_keys,
    entry_bytes,
    normalize,
    text_digest,
)
from stores.embed_cache_redis import RedisStore, decode, encode
from tests.conftest import free_port
from tests.redis_server import RedisServer
from tests.unit.stores.fake_clock import FakeClock

DIM = 8
V1, V2 = "m/v1@aaaa", "m/v2@bbbb"


def vector(seed: float) -> bytes:
    return (np.arange(DIM, dtype="<f4") + seed).tobytes()


def entries(tenant: str, space: str, texts: list[str]) -> list[tuple[CacheKey, Cached]]:
    """An entry per text whose vector and token count say which text it was."""
    keys = cache_keys(tenant, space, texts)
    return [
        (k, Cached(vector(n), len(t))) for n, (k, t) in enumerate(zip(keys, texts, strict=True))
    ]


@dataclass
class Backend:
    """How a test makes a store of one kind and lets time pass for it."""

    name: str
    make: Callable[[], EmbedStore]
    advance: Callable[[float], Awaitable[None]]

    def run(self, body: Callable[[EmbedStore], Awaitable[None]]) -> None:
        """Run `body` with a fresh store in a new event loop, closing it after."""

        async def main() -> None:
            store = self.make()
            try:
                await body(store)
            finally:
                await store.close()

        asyncio.run(main())


def _prefix() -> str:
    """Keys no other test uses (the Redis server is shared by the session)."""
    return f"t{uuid.uuid4().hex[:10]}:ec:"


@pytest.fixture(params=[MEMORY, REDIS])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == MEMORY:
        clock = FakeClock()
        return Backend(MEMORY, lambda: MemoryStore(1 << 20, clock), clock.advance)
    url: str = request.getfixturevalue("redis_url")
    prefix = _prefix()
    # A patient timeout: the contract is not about timeouts, and this machine may be busy.
    return Backend(REDIS, lambda: RedisStore(url, prefix=prefix, timeout_s=1.0), asyncio.sleep)


# ---- the contract, both stores ---------------------------------------------------------


def test_what_is_put_comes_back_in_order_and_the_rest_is_none(backend: Backend) -> None:
    async def body(store: EmbedStore) -> None:
        written = entries("acme", V1, ["red shoe", "blue sock", "green hat"])
        await store.put_many(written[:2], 60)
        keys = [written[2][0], written[0][0], written[1][0]]
        assert await store.get_many(keys) == [None, written[0][1], written[1][1]]
        assert await store.get_many([]) == []
        await store.put_many([], 60)

    backend.run(body)


def test_an_entry_is_replaced_by_a_later_put(backend: Backend) -> None:
    async def body(store: EmbedStore) -> None:
        key = cache_keys("acme", V1, ["red shoe"])[0]
        await store.put_many([(key, Cached(vector(1), 2))], 60)
        await store.put_many([(key, Cached(vector(7), 3))], 60)
        assert await store.get_many([key]) == [Cached(vector(7), 3)]

    backend.run(body)


def test_entries_expire_after_the_ttl_they_were_written_with(backend: Backend) -> None:
    async def body(store: EmbedStore) -> None:
        short, long = entries("acme", V1, ["short", "long"])
        await store.put_many([short], 0.3)
        await store.put_many([long], 60)
        assert await store.get_many([short[0], long[0]]) == [short[1], long[1]]
        await backend.advance(0.5)
        assert await store.get_many([short[0], long[0]]) == [None, long[1]]

    backend.run(body)


def test_tenants_and_versions_never_share_an_entry(backend: Backend) -> None:
    async def body(store: EmbedStore) -> None:
        ((mine, value),) = entries("acme", V1, ["red shoe"])
        await store.put_many([(mine, value)], 60)
        others = [mine._replace(tenant="globex"), mine._replace(space=V2)]
        assert others[0].digest == others[1].digest == mine.digest  # the same text
        assert await store.get_many([mine, *others]) == [value, None, None]

    backend.run(body)


def test_retain_deletes_the_retired_versions_only(backend: Backend) -> None:
    async def body(store: EmbedStore) -> None:
        old = entries("acme", V1, ["a", "b"]) + entries("globex", V1, ["a"])
        new = entries("acme", V2, ["a", "b"])
        await store.put_many(old + new, 60)
        await store.retain([V2, "m/v3@cccc"])
        assert await store.get_many([k for k, _ in old]) == [None] * 3
        assert await store.get_many([k for k, _ in new]) == [v for _, v in new]
        if isinstance(store, RedisStore):
            assert await store.spaces() == {V2}  # what it holds entries for
        await store.retain([])
        assert await store.get_many([k for k, _ in new]) == [None, None]

    backend.run(body)


def test_an_entry_comes_back_with_the_time_it_has_left(backend: Backend) -> None:
    async def body(store: EmbedStore) -> None:
        (key, value), (never, _) = entries("acme", V1, ["red shoe", "blue sock"])
        await store.put_many([(key, value)], 60)
        await backend.advance(0.4)
        missing, found = await store.get_many_with_ttl([never, key])
        assert missing is None
        assert found is not None
        assert found[0] == value
        assert 58.0 < found[1] <= 59.6 + 1e-9  # Redis: real time, on a busy machine
        assert await store.get_many_with_ttl([]) == []

    backend.run(body)


# ---- keys: the normalized text ---------------------------------------------------------


def test_texts_equal_but_for_whitespace_and_composition_share_a_key() -> None:
    same = ["café au lait", "  cafe\u0301 au\tlait\n", "café\u00a0\u3000au \r\n lait"]
    assert {normalize(t) for t in same} == {"café au lait"}
    assert len({text_digest(t) for t in same}) == 1
    # characters the tokenizer deletes (or keeps) are not whitespace here
    different = ["café au lait", "café au\x0blait", "café au\u200blait", "Café au lait"]
    assert len({text_digest(t) for t in different}) == len(different)
    assert text_digest("\ud800 lone surrogate") != text_digest("lone surrogate")


def test_the_tokenizer_agrees_that_normalized_texts_are_the_same(
    example_store: Path, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer

    with tarfile.open(example_store / "minilm" / "v1.tar") as tar:
        tar.extract("tokenizer.json", tmp_path, filter="data")
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    texts = [
        "  Red\t\tTrail   shoes\n",
        "cafe\u0301 cre\u0300me brûlée",
        "a\u2028b\u2029c\u00a0d\u3000e\u202ff\u205fg\u1680h\u2003i",
        "a\x0bb\x0cc\x85d\x1ce \u200bf",  # deleted by the tokenizer: never spaces here
        "東京 タワー\r\n\r\n  ",
    ]
    for text in texts:
        raw = tokenizer.encode(text).ids
        assert tokenizer.encode(normalize(text)).ids == raw, repr(text)


def test_a_space_with_a_colon_is_refused() -> None:
    with pytest.raises(ValueError, match="without ':'"):
        cache_keys("acme", "m:v1", ["x"])


def test_the_stored_form_round_trips_and_junk_is_a_miss() -> None:
    value = Cached(vector(3), 17)
    assert decode(encode(value)) == value
    for junk in (None, b"", b"\x01\x00\x00\x00", encode(value)[:-1]):
        assert decode(junk) is None


# ---- what only the memory tier promises -----------------------------------------------


def _sized(n: int) -> tuple[list[tuple[CacheKey, Cached]], int]:
    written = entries("acme", V1, [f"text {i}" for i in range(n)])
    sizes = {entry_bytes(k, v) for k, v in written}
    assert len(sizes) == 1
    return written, sizes.pop()


def test_memory_is_bounded_in_bytes_least_recently_used_first_out() -> None:
    written, size = _sized(5)
    store = MemoryStore(3 * size, FakeClock())
    store.store(written[:3], 60)
    assert (len(store), store.bytes) == (3, 3 * size)
    store.lookup([written[0][0]])  # 0 is now the most recently used
    store.store(written[3:4], 60)  # 1 goes
    held = store.lookup([k for k, _ in written[:4]])
    assert [v is not None for v in held] == [True, False, True, True]
    assert (len(store), store.bytes) == (3, 3 * size)
    store.resize(size)  # keeps the most recently used
    assert store.lookup([k for k, _ in written[:4]]) == [None, None, None, written[3][1]]
    assert store.bytes == size


def test_cold_entries_go_first_unless_used_again() -> None:
    written, size = _sized(6)
    store = MemoryStore(4 * size, FakeClock())
    store.store(written[:2], 60)  # hot: queries in use
    store.store(written[2:4], 60, cold=True)  # a bulk write of items
    store.lookup([written[3][0]])  # item 3 is asked for: hot from now on
    # Two more items into the full store: each takes the least recently used place.
    store.store(written[4:6], 60, cold=True)
    held = store.lookup([k for k, _ in written])
    assert [v is not None for v in held] == [True, True, False, True, False, True]
    assert store.bytes == 4 * size


def test_memory_counts_vector_bytes_and_key_overhead() -> None:
    ((key, value),) = entries("a-tenant", V1, ["x"])
    size = entry_bytes(key, value)
    assert size > len(value.vector) + len(key.space) + len(key.tenant) + len(key.digest)
    store = MemoryStore(size - 1, FakeClock())
    store.store([(key, value)], 60)  # larger than the bound: not kept
    assert (len(store), store.bytes) == (0, 0)


def test_memory_drops_expired_entries_when_met() -> None:
    clock = FakeClock()
    written, size = _sized(2)
    store = MemoryStore(10 * size, clock)
    store.store(written, 1.0)
    clock.now += 1.0
    assert store.lookup([written[0][0]]) == [None]
    assert (len(store), store.bytes) == (1, size)
    store.clear()
    assert (len(store), store.bytes) == (0, 0)


# ---- the two tiers ---------------------------------------------------------------------


class Counts:
    """A `CacheMetrics` that keeps what it is told."""

    def __init__(self) -> None:
        self.hits: dict[tuple[str, str], int] = {}
        self.misses: dict[tuple[str, str], int] = {}
        self.failures: list[str] = []

    def looked_up(self, use: str, tier: str, hits: int, misses: int) -> None:
        self.hits[(use, tier)] = self.hits.get((use, tier), 0) + hits
        self.misses[(use, tier)] = self.misses.get((use, tier), 0) + misses

    def redis_failed(self, op: str) -> None:
        self.failures.append(op)


def _tiered(
    url: str | None, prefix: str, clock: Callable[[], float] = time.monotonic, **kw: float
) -> tuple[EmbedCache, Counts]:
    counts = Counts()
    redis = RedisStore(url, prefix=prefix, **kw) if url else None
    cache = EmbedCache(MemoryStore(1 << 20), redis, counts, logging.getLogger("test.cache"), clock)
    cache.configure(True, 1 << 20, 60, ["search"])
    return cache, counts


def test_memory_first_then_redis_and_a_redis_hit_fills_memory(redis_url: str) -> None:
    prefix = _prefix()

    async def body() -> None:
        writer, _ = _tiered(redis_url, prefix, timeout_s=1.0)
        reader, counts = _tiered(redis_url, prefix, timeout_s=1.0)  # another replica
        for cache in (writer, reader):
            cache.retain([V1])
        written = entries("acme", V1, ["red shoe", "blue sock"])
        writer.put(written[:1])
        await writer.settle()
        keys = [k for k, _ in written]
        assert await reader.get("search", keys) == [written[0][1], None]
        assert counts.hits == {("search", MEMORY): 0, ("search", REDIS): 1}
        assert counts.misses == {("search", MEMORY): 2, ("search", REDIS): 1}
        assert reader.memory.lookup(keys[:1]) == [written[0][1]]  # filled
        await reader.get("search", keys[:1])
        assert counts.hits[("search", MEMORY)] == 1  # no second trip to Redis
        assert counts.misses[("search", REDIS)] == 1
        for cache in (writer, reader):
            await cache.close()

    asyncio.run(body())


def test_a_copy_from_the_shared_tier_expires_with_its_entry() -> None:
    """The embedded store as the shared tier, on a fake clock: a hit copied into a
    replica's memory keeps only the time the shared entry had left."""
    clock = FakeClock()
    shared = MemoryStore(1 << 20, clock)

    def replica() -> EmbedCache:
        cache = EmbedCache(MemoryStore(1 << 20, clock), shared, clock=clock)
        cache.configure(True, 1 << 20, 3600, ["search"])
        cache.retain([V1])
        return cache

    async def body() -> None:
        writer, reader = replica(), replica()
        written = entries("acme", V1, ["red shoe"])
        writer.put(written)  # at t=0, for 3600 s
        await writer.settle()
        keys = [k for k, _ in written]
        clock.now += 3000
        assert await reader.get("search", keys) == [written[0][1]]  # from the shared tier
        assert reader.memory.lookup_with_ttl(keys) == [(written[0][1], 600.0)]
        clock.now += 600
        assert reader.memory.lookup(keys) == [None]
        assert await reader.get("search", keys) == [None]

    asyncio.run(body())


def test_a_copy_from_redis_expires_with_its_key(redis_url: str) -> None:
    prefix = _prefix()

    async def body() -> None:
        writer, _ = _tiered(redis_url, prefix, timeout_s=1.0)
        writer.configure(True, 1 << 20, 0.5, ["search"])  # keys live 0.5 s
        reader, _ = _tiered(redis_url, prefix, timeout_s=1.0)  # its own TTL: 60 s
        for cache in (writer, reader):
            cache.retain([V1])
        written = entries("acme", V1, ["red shoe"])
        writer.put(written)
        await writer.settle()
        keys = [k for k, _ in written]
        assert await reader.get("search", keys) == [written[0][1]]
        ((_, left),) = [hit for hit in reader.memory.lookup_with_ttl(keys) if hit]
        assert 0 < left <= 0.5
        await asyncio.sleep(0.6)
        assert reader.memory.lookup(keys) == [None]
        for cache in (writer, reader):
            await cache.close()

    asyncio.run(body())


def test_a_redis_key_without_expiry_is_copied_for_the_cache_ttl(redis_url: str) -> None:
    import redis

    prefix = _prefix()
    ((key, value),) = entries("acme", V1, ["red shoe"])
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}{key.space}:{key.tenant}:{key.digest}", encode(value))  # no PX
    client.close()

    async def body() -> None:
        store = RedisStore(redis_url, prefix=prefix, timeout_s=1.0)
        assert await store.get_many_with_ttl([key]) == [(value, float("inf"))]
        await store.close()
        reader, _ = _tiered(redis_url, prefix, timeout_s=1.0)
        reader.retain([V1])
        assert await reader.get("search", [key]) == [value]
        ((_, left),) = [hit for hit in reader.memory.lookup_with_ttl([key]) if hit]
        assert 59.0 < left <= 60.0  # the reader's own TTL (real time passes)
        await reader.close()

    asyncio.run(body())


def test_only_configured_uses_and_live_versions_are_served() -> None:
    async def body() -> None:
        cache, _ = _tiered(None, "")
        cache.retain([V1])
        assert cache.serves("search", V1)
        assert not cache.serves("embeddings", V1)  # not among the uses
        assert not cache.serves("search", V2)  # not live
        cache.put(entries("acme", V1, ["a"]))
        cache.put(entries("acme", V2, ["a"]))  # embedded by a version retired meanwhile
        assert len(cache.memory) == 1
        cache.configure(False, 1 << 20, 60, ["search"])  # off: cleared and bypassed
        assert (len(cache.memory), cache.memory.bytes) == (0, 0)
        assert not cache.serves("search", V1)
        cache.put(entries("acme", V1, ["a"]))
        assert len(cache.memory) == 0

    asyncio.run(body())


def test_retiring_a_version_drops_it_now_in_memory_and_soon_in_redis(redis_url: str) -> None:
    prefix = _prefix()

    async def body() -> None:
        cache, _ = _tiered(redis_url, prefix, timeout_s=1.0)
        cache.retain([V1, V2])
        old, new = entries("acme", V1, ["a", "b"]), entries("acme", V2, ["a"])
        cache.put(old + new)
        await cache.settle()
        shared = RedisStore(redis_url, prefix=prefix, timeout_s=1.0)
        assert await shared.spaces() == {V1, V2}
        cache.retain([V2])
        assert cache.memory.lookup([k for k, _ in old]) == [None, None]  # at once
        await cache.settle()  # Redis: in the background
        assert await shared.get_many([k for k, _ in old + new]) == [None, None, new[0][1]]
        assert await shared.spaces() == {V2}
        await shared.close()
        await cache.close()

    asyncio.run(body())


def test_a_failed_write_never_turns_lookups_off(own_server: RedisServer) -> None:
    async def body() -> None:
        cache, counts = _tiered(own_server.url, _prefix(), timeout_s=1.0)
        cache.retain([V1])
        written = entries("acme", V1, ["a", "b"])
        cache.put(written[:1])
        await cache.settle()
        own_server.stop()
        cache.put(written[1:])
        await cache.settle()
        assert counts.failures == ["put"]
        own_server.start()  # back, empty
        cache.memory.clear()
        # Redis is asked at once (no pause after a failed write): a miss, not skipped.
        assert await cache.get("search", [k for k, _ in written]) == [None, None]
        assert counts.misses[("search", REDIS)] == 2
        assert counts.failures == ["put"]
        await cache.close()

    asyncio.run(body())


def test_a_redis_restarted_between_lookups_answers_the_next_one(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart (or failover) closes the pooled connections while nothing is asked:
    the next call finds its connection broken and retries once on a new one, so no
    lookup misses and no outage is declared (the asyncio client ignored the retry
    policy of the synchronous one it was given, and each pooled connection failed one
    call after every restart)."""

    async def body() -> None:
        cache, counts = _tiered(own_server.url, _prefix(), timeout_s=1.0)
        cache.retain([V1])
        written = entries("acme", V1, ["a", "b"])
        keys = [k for k, _ in written]
        cache.put(written)
        await cache.settle()
        own_server.stop()
        own_server.start()  # back, empty
        cache.memory.clear()
        with caplog.at_level(logging.INFO, logger="test.cache"):
            assert await cache.get("search", keys) == [None, None]
            cache.put(written)
            await cache.settle()
            cache.memory.clear()
            assert await cache.get("search", keys) == [v for _, v in written]
        assert counts.failures == []
        assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
        await cache.close()

    asyncio.run(body())


def test_redis_writes_in_flight_are_bounded(redis_url: str) -> None:
    prefix = _prefix()

    async def body() -> None:
        cache, _ = _tiered(redis_url, prefix, timeout_s=1.0)
        cache.retain([V1])
        written = entries("acme", V1, [f"text {n}" for n in range(3 * MAX_PENDING_WRITES)])
        for entry in written:  # one burst: no write has started yet
            cache.put([entry])
        await cache.settle()
        shared = RedisStore(redis_url, prefix=prefix, timeout_s=1.0)
        found = await shared.get_many([k for k, _ in written])
        assert sum(f is not None for f in found) == MAX_PENDING_WRITES  # the rest dropped
        assert cache.memory.lookup([k for k, _ in written]) == [v for _, v in written]
        await shared.close()
        await cache.close()

    asyncio.run(body())


# ---- Redis failing: a miss, never an error ------------------------------------------


def test_a_redis_outage_is_a_miss_logged_once(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()

    async def body() -> None:
        cache, counts = _tiered(own_server.url, _prefix(), clock)
        cache.retain([V1])
        written = entries("acme", V1, ["in memory", "in redis only"])
        cache.put(written)
        await cache.settle()
        cache.memory.clear()
        cache.put(written[:1])
        keys = [k for k, _ in written]
        own_server.stop()
        with caplog.at_level(logging.INFO, logger="test.cache"):
            started = time.monotonic()
            for _ in range(3):
                assert await cache.get("search", keys) == [written[0][1], None]
                cache.put(written[1:])  # skipped for Redis, kept in memory
                cache.memory.clear()
                cache.put(written[:1])
                clock.now += RETRY_S  # each lookup tries Redis again
            assert time.monotonic() - started < 5.0  # a refused connection fails fast
            await cache.settle()
            assert counts.misses[("search", REDIS)] == 3
            assert "get" in counts.failures
            assert set(counts.failures) <= {"get", "put"}
            down = [r for r in caplog.records if "unreachable" in r.getMessage()]
            assert len(down) == 1  # once per outage
            own_server.start()  # back, empty
            clock.now += RETRY_S
            assert await cache.get("search", keys) == [written[0][1], None]
            assert any("answers again" in r.getMessage() for r in caplog.records)
        await cache.close()

    asyncio.run(body())


def test_a_stuck_redis_costs_a_lookup_at_most_its_short_timeout(own_server: RedisServer) -> None:
    assert own_server.proc is not None
    pid = own_server.proc.pid

    async def body() -> None:
        cache, counts = _tiered(own_server.url, _prefix())  # the default timeout
        cache.retain([V1])
        keys = cache_keys("acme", V1, ["a", "b"])
        assert await cache.get("search", keys) == [None, None]  # connected
        await cache.settle()  # the retirement `retain` started has finished
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert await cache.get("search", keys) == [None, None]
            took = time.monotonic() - started
            assert took < 2.0, took  # bounded by the short timeout, not hung on Redis
            assert counts.failures == ["get"]
            # Within RETRY_S Redis is not asked at all: asking a stopped Redis would
            # time out and count a second failure.
            assert await cache.get("search", keys) == [None, None]
            assert counts.failures == ["get"]
        finally:
            os.kill(pid, signal.SIGCONT)
        await cache.close()

    asyncio.run(body())


def test_no_password_in_errors_or_logs(
    redis_with_password: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    password = redis_with_password.password
    assert password is not None
    port = redis_with_password.port
    good = f"redis://:{password}@127.0.0.1:{port}/0"
    wrong = f"redis://:not-{password}@127.0.0.1:{port}/0"
    nowhere = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    keys = cache_keys("acme", V1, ["a"])

    async def body() -> None:
        store = RedisStore(good, prefix=_prefix(), timeout_s=1.0)
        await store.put_many([(keys[0], Cached(vector(1), 1))], 60)
        assert await store.get_many(keys) == [Cached(vector(1), 1)]
        await store.close()
        for url in (wrong, nowhere):
            failing = RedisStore(url, timeout_s=1.0)
            with pytest.raises(CacheUnavailable) as caught:
                await failing.get_many(keys)
            assert password not in str(caught.value)
            assert "127.0.0.1:" in str(caught.value)
            await failing.close()
            cache, _ = _tiered(url, _prefix(), timeout_s=1.0)
            cache.retain([V1])
            with caplog.at_level(logging.INFO, logger="test.cache"):
                assert await cache.get("search", keys) == [None]
            await cache.close()
        assert caplog.records
        assert all(password not in r.getMessage() + str(r.__dict__) for r in caplog.records)

    asyncio.run(body())
