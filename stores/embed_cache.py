"""The embedding cache: the vector and token count of each text already embedded, keyed by
tenant, embedding space and the hash of the normalized text.

A space is a `model/version` (callers add the artifact's digest,
`minilm/v1@0a4936834d14`): an entry is never served for another version, nor to another
tenant, because both are part of its key. Two backends answer one interface
(`EmbedStore`): `MemoryStore`, an LRU in this process bounded in bytes, and `RedisStore`
(`stores/embed_cache_redis.py`), shared by every replica. `EmbedCache` puts them in two
tiers: memory first, then Redis; a Redis hit fills memory for the time it has left in
Redis (never a fresh TTL, so no entry outlives its TTL by being copied). Redis never
fails a request and never holds one up for long: a lookup it does not answer within its
short timeout counts as a miss, writes go in the background, and an outage is logged
once, after which Redis is left alone for `RETRY_S` between tries.

Versions are retired by telling the cache which spaces are live (`EmbedCache.retain`):
memory drops the entries of the others at once; Redis keeps the set of spaces it holds
entries for and deletes the keys of the retired ones in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from logging import Logger, getLogger
from typing import NamedTuple, Protocol

MEMORY, REDIS = "memory", "redis"  # the tiers, as metrics name them
# Per entry, what the memory tier holds besides the vector and the key's characters
# (the dictionary slot, the key tuple and its strings' headers, the value's objects).
# Rounded up: tracemalloc measures 1,962 bytes an entry of 384 dimensions (1,536 of
# them the vector) on CPython 3.11, which this counts as 2,005.
ENTRY_OVERHEAD_BYTES = 400
RETRY_S = 1.0  # after a Redis failure, lookups and writes skip Redis this long
# Redis writes in flight; beyond, a write is dropped (memory has it). Half of the Redis
# store's connections (`embed_cache_redis.DEFAULT_MAX_CONNECTIONS`), so lookups find one.
MAX_PENDING_WRITES = 8

# What the BERT normalizer of the served tokenizers turns into a space: Unicode
# White_Space less the control characters it deletes instead (\v, \f, \x85; Python's
# `str.split` would also split on those, and on \x1c-\x1f, which the tokenizer deletes).
_WHITESPACE = re.compile("[\t\n\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def normalize(text: str) -> str:
    """The text as the cache keys it: Unicode NFC, runs of whitespace as one space,
    stripped. Texts equal after this tokenize alike: the tokenizer splits on whitespace
    and decomposes Unicode itself (NFD of the NFC is the NFD)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip(" ")


def text_digest(text: str) -> str:
    """Hex BLAKE2b-128 of the normalized text (lone surrogates pass: hashing never fails)."""
    data = normalize(text).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class CacheKey(NamedTuple):
    """Whose text, embedded in which space."""

    space: str  # `model/version`, with any suffix the caller adds; never a ':'
    tenant: str
    digest: str  # `text_digest` of the text


class Cached(NamedTuple):
    """One text's embedding: float32 little-endian bytes and the tokens the model read."""

    vector: bytes
    tokens: int


def cache_keys(tenant: str, space: str, texts: Sequence[str]) -> list[CacheKey]:
    """The keys of `texts` of `tenant` in `space`."""
    if ":" in space or not space:
        raise ValueError(f"space {space!r}: expected a non-empty name without ':'")
    return [CacheKey(space, tenant, text_digest(text)) for text in texts]


class CacheUnavailable(Exception):
    """The shared store did not answer (down, unreachable, too slow); never carries a
    password."""


class EmbedStore(Protocol):
    """Where entries are kept. Entries expire `ttl_s` after they are written."""

    async def get_many(self, keys: Sequence[CacheKey]) -> list[Cached | None]:
        """The entry of each key, in order; None where there is none (or it expired)."""
        ...

    async def get_many_with_ttl(
        self, keys: Sequence[CacheKey]
    ) -> list[tuple[Cached, float] | None]:
        """`get_many`, each entry with the seconds it has left before it expires."""
        ...

    async def put_many(self, entries: Sequence[tuple[CacheKey, Cached]], ttl_s: float) -> None:
        """Write (or replace) entries, each to expire `ttl_s` from now."""
        ...

    async def retain(self, live: Collection[str]) -> None:
        """Delete the entries of every space not in `live`."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryStore:
    """Entries in this process, least recently used first out, bounded in bytes: vector
    bytes plus key characters plus `ENTRY_OVERHEAD_BYTES` each. Nothing here awaits, so
    the event loop makes every call atomic."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0  # what the entries held now take
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[Cached, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: Sequence[CacheKey]) -> list[Cached | None]:
        """`get_many` without a coroutine (what `EmbedCache` calls)."""
        return [None if found is None else found[0] for found in self.lookup_with_ttl(keys)]

    def lookup_with_ttl(self, keys: Sequence[CacheKey]) -> list[tuple[Cached, float] | None]:
        """`get_many_with_ttl` without a coroutine."""
        now = self._clock()
        found: list[tuple[Cached, float] | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and entry[1] <= now:
                self._drop(key)
                entry = None
            if entry is None:
                found.append(None)
            else:
                self._entries.move_to_end(key)
                found.append((entry[0], entry[1] - now))
        return found

    def store(
        self, entries: Sequence[tuple[CacheKey, Cached]], ttl_s: float, cold: bool = False
    ) -> None:
        """`put_many` without a coroutine. An entry larger than the bound is not kept.
        `cold`: the entries go in as the least recently used (first out unless looked up
        again; each takes the place of the least recently used), so a bulk write (a
        catalog's items) never pushes out more than its own size of the coldest."""
        self.store_with_ttl([(key, value, ttl_s) for key, value in entries], cold)

    def store_with_ttl(
        self, entries: Sequence[tuple[CacheKey, Cached, float]], cold: bool = False
    ) -> None:
        """`store`, each entry to expire the seconds given with it from now."""
        now = self._clock()
        for key, value, ttl_s in entries:
            expires = now + ttl_s
            self._drop(key)
            size = entry_bytes(key, value)
            if size > self.max_bytes:
                continue
            if cold:  # room is made first, so it never evicts itself
                while self.bytes + size > self.max_bytes:
                    _, (_, _, gone) = self._entries.popitem(last=False)
                    self.bytes -= gone
            self._entries[key] = (value, expires, size)
            self.bytes += size
            if cold:
                self._entries.move_to_end(key, last=False)
        self._evict()

    def resize(self, max_bytes: int) -> None:
        """A new bound; the least recently used entries go until it holds."""
        self.max_bytes = max_bytes
        self._evict()

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self.bytes = 0

    def drop_spaces(self, live: Collection[str]) -> int:
        """`retain` without a coroutine; how many entries went."""
        keep = set(live)
        gone = [key for key in self._entries if key.space not in keep]
        for key in gone:
            self._drop(key)
        return len(gone)

    async def get_many(self, keys: Sequence[CacheKey]) -> list[Cached | None]:
        """The entry of each key, in order (each hit becomes the most recently used)."""
        return self.lookup(keys)

    async def get_many_with_ttl(
        self, keys: Sequence[CacheKey]
    ) -> list[tuple[Cached, float] | None]:
        """`get_many`, each entry with the seconds it has left."""
        return self.lookup_with_ttl(keys)

    async def put_many(self, entries: Sequence[tuple[CacheKey, Cached]], ttl_s: float) -> None:
        """Write entries, then drop the least recently used until the bound holds."""
        self.store(entries, ttl_s)

    async def retain(self, live: Collection[str]) -> None:
        """Drop the entries of spaces not in `live`."""
        self.drop_spaces(live)

    async def close(self) -> None:
        """Nothing to release."""

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]

    def _evict(self) -> None:
        while self.bytes > self.max_bytes:
            _, (_, _, size) = self._entries.popitem(last=False)
            self.bytes -= size


def entry_bytes(key: CacheKey, value: Cached) -> int:
    """What one entry counts against the memory bound."""
    chars = len(key.space) + len(key.tenant) + len(key.digest)
    return len(value.vector) + chars + ENTRY_OVERHEAD_BYTES


class CacheMetrics(Protocol):
    """Where lookups and Redis failures are counted."""

    def looked_up(self, use: str, tier: str, hits: int, misses: int) -> None:
        """Texts one tier answered (`hits`) or did not (`misses`) for one lookup."""

    def redis_failed(self, op: str) -> None:
        """A Redis call (`get`, `put`, `retain`) that failed or timed out."""


class _NoMetrics:
    def looked_up(self, use: str, tier: str, hits: int, misses: int) -> None:
        pass

    def redis_failed(self, op: str) -> None:
        pass


class EmbedCache:
    """Memory, then Redis (when given). Serves nothing until `configure` names its uses
    and `retain` its live spaces."""

    def __init__(
        self,
        memory: MemoryStore,
        redis: EmbedStore | None = None,
        metrics: CacheMetrics | None = None,
        log: Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.enabled = True
        self.ttl_s = 3600.0
        self.uses: frozenset[str] = frozenset()
        self.live: frozenset[str] = frozenset()
        self._metrics: CacheMetrics = metrics or _NoMetrics()
        self._log = log or getLogger("servekit.cache")
        self._clock = clock
        self._skip_redis_until = 0.0
        self._redis_down = False
        self._writes: set[asyncio.Task[None]] = set()
        self._retiring: asyncio.Task[None] | None = None
        self._retire_again = False

    def configure(self, enabled: bool, max_bytes: int, ttl_s: float, uses: Collection[str]) -> None:
        """Live settings: off clears memory and bypasses both tiers; a smaller bound
        drops the least recently used entries; the TTL applies to entries written next."""
        self.enabled, self.ttl_s, self.uses = enabled, ttl_s, frozenset(uses)
        self.memory.resize(max_bytes if enabled else 0)

    def serves(self, use: str, space: str) -> bool:
        """Whether lookups of `use` (e.g. `search`, `embeddings`) in `space` go through."""
        return self.enabled and use in self.uses and space in self.live

    def retain(self, live: Collection[str]) -> None:
        """Keep only the spaces in `live`: memory drops the others' entries now, Redis
        deletes theirs in the background (needs a running event loop when Redis is set)."""
        self.live = frozenset(live)
        self.memory.drop_spaces(self.live)
        if self.redis is None:
            return
        if self._retiring is not None and not self._retiring.done():
            self._retire_again = True  # the running pass starts over with the new set
            return
        self._retiring = asyncio.get_running_loop().create_task(self._retire())

    async def get(self, use: str, keys: Sequence[CacheKey]) -> list[Cached | None]:
        """The entry of each key, in order, or None: memory, then Redis for the rest
        (copied into memory for what is left of their time in Redis, at most the TTL)."""
        found = self.memory.lookup(keys)
        missing = [n for n, entry in enumerate(found) if entry is None]
        self._metrics.looked_up(use, MEMORY, len(keys) - len(missing), len(missing))
        if not missing or self.redis is None:
            return found
        shared: list[tuple[Cached, float] | None] = [None] * len(missing)
        if self._redis_usable():
            try:
                shared = await self.redis.get_many_with_ttl([keys[n] for n in missing])
            except CacheUnavailable as e:
                self._failed("get", e)
            else:
                self._answered()
        fill = []
        for n, hit in zip(missing, shared, strict=True):
            if hit is not None:
                found[n] = hit[0]
                if keys[n].space in self.live:
                    fill.append((keys[n], hit[0], min(hit[1], self.ttl_s)))
        self.memory.store_with_ttl(fill)
        self._metrics.looked_up(use, REDIS, len(fill), len(missing) - len(fill))
        return found

    def put(self, entries: Sequence[tuple[CacheKey, Cached]], cold: bool = False) -> None:
        """Store entries: in memory now (`cold`: as the least recently used), in Redis
        in the background (dropped when Redis is failing or too many writes are in
        flight)."""
        entries = self._live_only(entries)  # a version retired while they were embedded
        if not entries or not self.enabled:
            return
        self.memory.store(entries, self.ttl_s, cold)
        if (
            self.redis is None
            or not self._redis_usable()
            or len(self._writes) >= MAX_PENDING_WRITES
        ):
            return
        task = asyncio.get_running_loop().create_task(self._write(list(entries), self.ttl_s))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def settle(self) -> None:
        """Wait for the background writes and retirement in flight."""
        while pending := [t for t in (*self._writes, self._retiring) if t and not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Finish what is in flight, then release Redis."""
        await self.settle()
        if self.redis is not None:
            await self.redis.close()

    # ---- Redis, in the background and off when failing ----------------------------

    async def _write(self, entries: list[tuple[CacheKey, Cached]], ttl_s: float) -> None:
        assert self.redis is not None
        try:
            await self.redis.put_many(entries, ttl_s)
        except CacheUnavailable:
            # Counted, but lookups keep asking: a large write can time out where a
            # lookup answers (writes are dropped, never retried).
            self._metrics.redis_failed("put")
        except Exception:  # a bug here must not surface as a stray task error
            self._log.exception("embedding cache: writing to Redis failed")
        else:
            self._answered()

    async def _retire(self) -> None:
        assert self.redis is not None
        self._retire_again = True
        while self._retire_again:
            self._retire_again = False
            try:
                await self.redis.retain(self.live)
            except CacheUnavailable as e:
                self._failed("retain", e)
                return  # the next reconfigure (or replica start) tries again
            except Exception:  # a bug here must not end the replica's other work
                self._log.exception("embedding cache: retiring versions failed")
                return

    def _live_only(
        self, entries: Sequence[tuple[CacheKey, Cached]]
    ) -> Sequence[tuple[CacheKey, Cached]]:
        return [e for e in entries if e[0].space in self.live]

    def _redis_usable(self) -> bool:
        return self._clock() >= self._skip_redis_until

    def _failed(self, op: str, error: CacheUnavailable) -> None:
        self._metrics.redis_failed(op)
        self._skip_redis_until = self._clock() + RETRY_S
        if not self._redis_down:  # once per outage
            self._redis_down = True
            self._log.warning(
                "embedding cache: Redis unreachable, serving from memory",
                extra={"fields": {"op": op, "error": str(error)}},
            )

    def _answered(self) -> None:
        if self._redis_down:
            self._redis_down = False
            self._log.info("embedding cache: Redis answers again")
