"""The embedding cache in Redis, shared by every replica (`stores/embed_cache.py` has the
interface and the memory tier).

Keys: `<prefix><space>:<tenant>:<digest>`, each a string value: the token count (uint32
little-endian) then the float32 vector, written with `SET ... PX <ttl>` (pipelined, one
round trip per request) and read with one `MGET` (or, when the reader keeps a copy, one
script answering each key's value and `PTTL`, so the copy expires when the key does). The
set `<prefix>spaces` names every space with entries; retiring a space deletes its keys
(`SCAN MATCH <prefix><space>:*`, `UNLINK`), then takes it out of the set. A write that
races with the deletion (a replica that has not applied the new config yet) adds its
space back, so the next retirement catches it; whatever slips through still expires with
its TTL.

Spaces contain no ':', so `<prefix><space>:` starts the keys of one space only. Redis
bounds its own memory (`maxmemory` with an `allkeys-lru` or `volatile-lru` policy).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Awaitable, Collection, Sequence
from typing import cast

from redis.exceptions import RedisError

from stores._redis import connect, failure
from stores.embed_cache import Cached, CacheKey, CacheUnavailable

DEFAULT_PREFIX = "servekit:ec:"
# Lookups wait at most this for Redis (a LAN round trip is well under a millisecond);
# slower counts as a miss.
DEFAULT_TIMEOUT_S = 0.05
DEFAULT_MAX_CONNECTIONS = 16
SCAN_COUNT = 1000  # keys Redis looks at per SCAN call while retiring a space
_TOKENS = struct.Struct("<I")
# Each key's value (false: none) and its PTTL, in turn.
_GET_WITH_TTL = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', key)
  out[2 * i] = redis.call('PTTL', key)
end
return out
"""
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


# Entries per pipelined write: about 100 kB of MiniLM vectors, well inside the timeout.
WRITE_CHUNK = 64


class RedisStore:
    """Entries in Redis behind the `EmbedStore` interface. Every call is bounded by
    `timeout_s`; whatever goes wrong with the store raises `CacheUnavailable`."""

    def __init__(
        self,
        url: str,
        password: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._client, self.where = connect(url, password, timeout_s, max_connections)
        self._prefix = prefix
        self._spaces = f"{prefix}spaces"
        self._get_with_ttl = self._client.register_script(_GET_WITH_TTL)

    async def get_many(self, keys: Sequence[CacheKey]) -> list[Cached | None]:
        """The entry of each key, in order; None where there is none: one `MGET`."""
        if not keys:
            return []
        try:
            values = await self._client.mget([self._key(key) for key in keys])
        except RedisError as e:
            raise self._unavailable(e) from e
        return [decode(value) for value in values]

    async def get_many_with_ttl(
        self, keys: Sequence[CacheKey]
    ) -> list[tuple[Cached, float] | None]:
        """`get_many`, each entry with the seconds it has left: one script reading each
        key's value and `PTTL` on the server, one round trip (a transaction of `MGET`
        and a `PTTL` per key cost the client about 8 us a text more)."""
        if not keys:
            return []
        try:
            reply = await self._get_with_ttl(keys=[self._key(key) for key in keys])
        except RedisError as e:
            raise self._unavailable(e) from e
        return [
            _with_ttl(decode(raw or None), int(ms))
            for raw, ms in zip(reply[::2], reply[1::2], strict=True)
        ]

    async def put_many(self, entries: Sequence[tuple[CacheKey, Cached]], ttl_s: float) -> None:
        """`SET ... PX` of each entry and `SADD` of their spaces: one round trip per
        `WRITE_CHUNK` entries, so each fits the short timeout."""
        if not entries:
            return
        ttl_ms = max(1, round(ttl_s * 1000))
        try:
            for at in range(0, len(entries), WRITE_CHUNK):
                chunk = entries[at : at + WRITE_CHUNK]
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, value in chunk:
                        pipe.set(self._key(key), encode(value), px=ttl_ms)
                    pipe.sadd(self._spaces, *sorted({key.space for key, _ in chunk}))
                    await pipe.execute()
        except RedisError as e:
            raise self._unavailable(e) from e

    async def retain(self, live: Collection[str]) -> None:
        """Delete the keys of every space with entries that is not in `live`."""
        try:
            for space in sorted(await self._members() - set(live)):
                await self._delete_space(space)
                await cast(Awaitable[int], self._client.srem(self._spaces, space))
        except RedisError as e:
            raise self._unavailable(e) from e

    async def spaces(self) -> set[str]:
        """The spaces Redis holds entries for (as far as its set of spaces knows)."""
        try:
            return await self._members()
        except RedisError as e:
            raise self._unavailable(e) from e

    async def close(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def _delete_space(self, space: str) -> None:
        pattern = f"{self._prefix}{space}:".translate(_GLOB) + "*"
        cursor = 0
        while True:
            cursor, keys = await self._client.scan(cursor, match=pattern, count=SCAN_COUNT)
            if keys:
                await self._client.unlink(*keys)
            if cursor == 0:
                return

    async def _members(self) -> set[str]:
        members = await cast(Awaitable[set[bytes]], self._client.smembers(self._spaces))
        return {member.decode() for member in members}

    def _key(self, key: CacheKey) -> str:
        return f"{self._prefix}{key.space}:{key.tenant}:{key.digest}"

    def _unavailable(self, error: RedisError) -> CacheUnavailable:
        return CacheUnavailable(failure("embedding cache", self.where, error, self._client))


def encode(value: Cached) -> bytes:
    """The stored form: the token count, then the vector's bytes."""
    return _TOKENS.pack(value.tokens) + value.vector


def _with_ttl(entry: Cached | None, left_ms: int) -> tuple[Cached, float] | None:
    """An entry with its seconds left (`PTTL`: -1 for a key without expiry, -2 for
    none); an entry at its last millisecond is a miss."""
    if entry is None or left_ms == 0 or left_ms < -1:
        return None
    return entry, math.inf if left_ms == -1 else left_ms / 1000


def decode(raw: bytes | None) -> Cached | None:
    """An entry from its stored form; None for none, or for bytes that cannot be one."""
    if raw is None or len(raw) <= _TOKENS.size or (len(raw) - _TOKENS.size) % 4:
        return None
    return Cached(raw[_TOKENS.size :], _TOKENS.unpack_from(raw)[0])
