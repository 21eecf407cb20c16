"""The online feature store in Redis, shared by every replica (production).

A row is a hash, `<prefix>{<tenant>}:<view>:<entity>` (the tenant in a hash tag, so that
Redis Cluster keeps a tenant's rows in one slot), whose fields are the row's fields:
numbers as their decimal text, lists as JSON. A read is one `HGETALL` per row, all rows
of a call in one pipeline: one round trip. A batch of merges is one pipeline of one Lua
script call per row (the script merges atomically on the server, as
`stores.features.apply_merge` does), so events from many replicas never lose an update.
Every write sets the row to expire at its newest event's time plus the view's TTL
(`PEXPIREAT`), so a stale row is gone for readers and merges alike, and Redis frees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from redis.exceptions import RedisError

from stores._redis import connect, failure
from stores.features import (
    AT_FIELD,
    FeatureStoreUnavailable,
    Merge,
    Row,
    RowKey,
    Value,
    check_key,
    times_field,
)

DEFAULT_PREFIX = "servekit:fs:"
# Reads sit on the request path: a LAN round trip is well under a millisecond, and a
# read that takes longer than this answers defaults instead of holding the request.
DEFAULT_TIMEOUT_S = 0.1
DEFAULT_MAX_CONNECTIONS = 16
WRITE_CHUNK = 256  # rows per pipelined write

# ARGV[1]: the row's TTL (s); then (op, field, value) triples: a add, h high, l low,
# p push (value: JSON [max_len, times field, item, time, ...], times as decimal texts);
# the last triple is ('h', '_at', newest event time). A push runs `stores.features.pushed`
# over the new items and the stored ones (those stored without a time: as of `_at`).
_MERGE = """
local key, ttl = KEYS[1], tonumber(ARGV[1])
local MAXF = 1.7976931348623157e308
-- A stored value as the reference merge reads it: what is not a number counts 0.
local function num(raw)
  local x = tonumber(raw)
  if x == nil or x ~= x then return 0 end
  return x
end
-- Sums add in double and stay finite, as the reference's do; 17 digits read back exact.
local function fmt(x)
  if x > MAXF then x = MAXF elseif x < -MAXF then x = -MAXF end
  return string.format('%.17g', x)
end
-- A stored list as the reference reads it: what is not a list is none.
local function list(raw)
  if not raw then return {} end
  local ok, v = pcall(cjson.decode, raw)
  if ok and type(v) == 'table' then return v end
  return {}
end
local function push(f, v)
  local new = cjson.decode(v)
  local max_len, tf = new[1], new[2]
  local cands = {}
  for j = 3, #new, 2 do table.insert(cands, {new[j], new[j + 1]}) end
  local old = list(redis.call('HGET', key, f))
  if #old > 0 then
    local times = list(redis.call('HGET', key, tf))
    local fallback = redis.call('HGET', key, '_at') or '0.0'
    for j, item in ipairs(old) do
      table.insert(cands, {item, times[j] or fallback})
    end
  end
  local best, order = {}, {}
  for n, p in ipairs(cands) do
    local b, t = best[p[1]], tonumber(p[2])
    if b == nil then
      b = {p[1], t, n, p[2]}
      best[p[1]] = b
      table.insert(order, b)
    elseif t > b[2] then
      b[2], b[3], b[4] = t, n, p[2]
    end
  end
  table.sort(order, function(x, y)
    if x[2] ~= y[2] then return x[2] > y[2] end
    return x[3] < y[3]
  end)
  local items, times = {}, {}
  for j = 1, math.min(max_len, #order) do
    items[j], times[j] = order[j][1], order[j][4]
  end
  if #items == 0 then
    redis.call('HSET', key, f, '[]', tf, '[]')
  else
    redis.call('HSET', key, f, cjson.encode(items), tf, cjson.encode(times))
  end
end
for i = 2, #ARGV, 3 do
  local op, f, v = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'a' then
    redis.call('HSET', key, f, fmt(num(redis.call('HGET', key, f)) + tonumber(v)))
  elseif op == 'h' or op == 'l' then
    local raw = redis.call('HGET', key, f)
    local x, cur = tonumber(v), num(raw)
    if not raw or (op == 'h' and x > cur) or (op == 'l' and x < cur) then
      redis.call('HSET', key, f, v)
    end
  elseif op == 'p' then
    push(f, v)
  end
end
local at = tonumber(redis.call('HGET', key, '_at'))
redis.call('PEXPIREAT', key, math.floor((at + ttl) * 1000))
return 1
"""


class RedisFeatureStore:
    """Rows in Redis hashes behind the `OnlineStore` interface. Every call is bounded by
    `timeout_s`; whatever goes wrong with Redis raises `FeatureStoreUnavailable`."""

    def __init__(
        self,
        url: str,
        password: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._client, self.where = connect(url, password, timeout_s, max_connections)
        self._script = self._client.register_script(_MERGE)
        self._prefix = prefix

    async def read(self, keys: Sequence[RowKey]) -> list[Row | None]:
        """Each key's row, in order; None where there is none (stale rows have expired)."""
        if not keys:
            return []
        try:
            if len(keys) == 1:
                replies = [await self._client.hgetall(self._key(keys[0]))]  # type: ignore[misc]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hgetall(self._key(key))
                    replies = await pipe.execute()
        except RedisError as e:
            raise self._unavailable(e) from e
        return [_decode(reply) if reply else None for reply in replies]

    async def merge(self, merges: Sequence[Merge]) -> None:
        """One script call per row, pipelined: each row merges atomically."""
        for m in merges:
            check_key(m.key)
        try:
            for at in range(0, len(merges), WRITE_CHUNK):
                async with self._client.pipeline(transaction=False) as pipe:
                    for m in merges[at : at + WRITE_CHUNK]:
                        await self._script(keys=[self._key(m.key)], args=_args(m), client=pipe)
                    await pipe.execute()
        except RedisError as e:
            raise self._unavailable(e) from e

    async def replace(self, rows: Sequence[tuple[RowKey, Row, float]]) -> None:
        """`DEL`, `HSET` and `PEXPIREAT` per row, each row in one transaction."""
        for key, row, _ in rows:
            check_key(key)
            if AT_FIELD not in row:
                raise ValueError(f"a replaced row carries {AT_FIELD}")
        try:
            for at in range(0, len(rows), WRITE_CHUNK):
                async with self._client.pipeline(transaction=True) as pipe:
                    for key, row, ttl_s in rows[at : at + WRITE_CHUNK]:
                        name = self._key(key)
                        pipe.delete(name)
                        pipe.hset(name, mapping={f: _encode(v) for f, v in row.items()})
                        expires = float(row[AT_FIELD]) + ttl_s  # type: ignore[arg-type]
                        pipe.pexpireat(name, int(expires * 1000))
                    await pipe.execute()
        except RedisError as e:
            raise self._unavailable(e) from e

    async def close(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    def _key(self, key: RowKey) -> str:
        return f"{self._prefix}{{{key.tenant}}}:{key.view}:{key.entity}"

    def _unavailable(self, error: RedisError) -> FeatureStoreUnavailable:
        return FeatureStoreUnavailable(failure("feature store", self.where, error, self._client))


def _args(m: Merge) -> list[Any]:
    args: list[Any] = [repr(float(m.ttl_s))]
    for name, delta in m.add.items():
        args += ["a", name, repr(float(delta))]
    for name, value in m.high.items():
        args += ["h", name, repr(float(value))]
    for name, value in m.low.items():
        args += ["l", name, repr(float(value))]
    for name, (items, max_len) in m.push.items():
        timed = [x for item, at in items for x in (item, repr(float(at)))]
        args += ["p", name, orjson.dumps([max_len, times_field(name), *timed])]
    return [*args, "h", AT_FIELD, repr(float(m.at))]


def _encode(value: Value) -> bytes | str:
    return orjson.dumps(value) if isinstance(value, list) else repr(float(value))


def _decode(raw: dict[bytes, bytes]) -> Row:
    row: Row = {}
    for name, value in raw.items():
        text = name.decode()
        row[text] = orjson.loads(value) if value[:1] == b"[" else float(value)
    return row
