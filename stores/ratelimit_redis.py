"""Rate limits in Redis, shared by every replica: one round trip (EVALSHA) per request.

One Lua script checks and takes atomically, on the server's clock (`TIME`), so replicas
whose clocks disagree still share one bucket; a key with limits of its own and its
tenant are checked and taken together in one run. Per subject there are two keys, both
carrying the subject's tenant in a hash tag (`{...}`) so that Redis Cluster keeps a
tenant's and its keys' in one slot (`<subject>` below: `{tn_x}` or `{tn_x}/key_y`):
- `<prefix><subject>:b`, a hash of each bucket's level and when it was measured
  (`r`/`rt` requests, `x`/`xt` texts, times in microseconds of the server's clock),
  expiring when the buckets are full again (an absent bucket is a full one);
- `<prefix><subject>:m:<YYYYMM>`, the texts counted in that UTC month, expiring a day
  after the month. The script derives YYYYMM from the server's clock, so it appends it
  to the key name it is given (the hash tag keeps the key in the declared slot).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import RedisError

from stores._ratelimit import Check, capacity, charges, decide, window
from stores._redis import connect, failure
from stores.ratelimit import Decision, LimiterUnavailable
from stores.tenants import RateLimits

# Mirrors stores/_ratelimit.py (check_bucket, check_month, the calendar). Numbers leave
# the script as strings: Redis would truncate a Lua number to an integer. A wait of -1
# says the take never fits (more than the bucket holds): `too_large`, no wait to tell.
_CALENDAR = """
local function civil(days)  -- days since 1970-01-01 -> year, month (proleptic Gregorian)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function first_day(y, m)  -- days since 1970-01-01 of the first of month m
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100)
    + math.floor((153 * mp + 2) / 5)
  return era * 146097 + doe - 719468
end

local function month_of(now)  -- 'YYYYMM' of the month holding now, and when the next starts
  local y, m = civil(math.floor(now / 86400))
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return string.format('%04d%02d', y, m), first_day(ny, nm) * 86400
end
"""

_ADMIT = """
-- For each subject s (0-based): KEYS[2s+1] its bucket hash, KEYS[2s+2] its monthly
-- counter's name without YYYYMM; ARGV[1] the texts, then per subject ARGV[3s+2..3s+4]:
-- requests_per_s, texts_per_s, monthly_texts ('' when not checked). Takes from every
-- subject or from none.
local EPSILON = 1e-9
local MIN_MONTHLY_RETRY = 1
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])  -- exact in a double
local now = now_us / 1000000
local n = tonumber(ARGV[1])
local function num(x) return string.format('%.17g', x) end

-- wait (-1: never fits), remaining, reset; then the level and its time (µs) to store if
-- all have room
local function bucket(rate, tokens, at, take)
  local cap = math.max(1, rate)
  local level = cap
  if tokens and at then
    level = math.min(cap, tokens + math.max(0, now_us - at) / 1000000 * rate)
    at = math.max(now_us, at)
  else
    at = now_us
  end
  if take > cap then return -1, level, (cap - level) / rate, level, at end
  if level + EPSILON < take then
    local wait = (take - level) / rate
    return wait, level, wait, level, at
  end
  local left = math.max(0, level - take)
  return 0, left, (cap - left) / rate, left, at
end

local out, ok = {}, true
local function report(wait, remaining, reset)
  if wait ~= 0 then ok = false end
  table.insert(out, num(wait)); table.insert(out, num(remaining)); table.insert(out, num(reset))
end
local ym, next_start = month_of(now)
local writes, months = {}, {}
for s = 0, #KEYS / 2 - 1 do
  local rr, xr = tonumber(ARGV[3 * s + 2]), tonumber(ARGV[3 * s + 3])
  local mq = tonumber(ARGV[3 * s + 4])
  local bkey = KEYS[2 * s + 1]
  local stored = redis.call('HMGET', bkey, 'r', 'rt', 'x', 'xt')
  local fields, full_s = {}, 0
  local function check(rate, tokens, at, take, name)
    local wait, remaining, reset, level, level_at =
      bucket(rate, tonumber(tokens), tonumber(at), take)
    report(wait, remaining, reset)
    for _, v in ipairs({name, num(level), name .. 't', num(level_at)}) do
      table.insert(fields, v)
    end
    full_s = math.max(full_s, reset)
  end
  if rr then check(rr, stored[1], stored[2], 1, 'r') end
  if xr then check(xr, stored[3], stored[4], n, 'x') end
  table.insert(writes, {bkey, fields, full_s})
  if mq then
    local month_key = KEYS[2 * s + 2] .. ym
    local used = tonumber(redis.call('GET', month_key)) or 0
    local reset = math.max(MIN_MONTHLY_RETRY, next_start - now)
    if n > 0 and used + n > mq then report(reset, math.max(0, mq - used), reset)
    else report(0, math.max(0, mq - used - n), reset) end
    table.insert(months, month_key)
  end
end
if not ok then return out end

for _, w in ipairs(writes) do
  if #w[2] > 0 then
    -- a bucket not checked now is forgotten (set again, it starts full); the hash lives
    -- until the buckets are full again, plus a second
    redis.call('DEL', w[1])
    redis.call('HSET', w[1], unpack(w[2]))
    redis.call('PEXPIRE', w[1], math.ceil(w[3] * 1000) + 1000)
  end
end
if n > 0 then
  for _, month_key in ipairs(months) do
    redis.call('INCRBY', month_key, n)
    redis.call('EXPIREAT', month_key, next_start + 86400)
  end
end
return out
"""

SCRIPT = _CALENDAR + _ADMIT
DEFAULT_TIMEOUT_S = 0.25
# Each admit holds a connection for one round trip (well under a millisecond on a LAN).
DEFAULT_MAX_CONNECTIONS = 16


class RedisLimiter:
    """Token buckets and monthly counters in Redis behind the `Limiter` interface.

    Calls are bounded by `timeout_s` (waiting for one of the `max_connections` pooled
    connections, connecting, and each reply), with one immediate retry on a broken
    connection (a pooled connection that outlived a Redis restart); whatever goes wrong
    with the store raises `LimiterUnavailable`. The pool is bounded so that a burst of
    requests queues for a few connections instead of opening one each.
    """

    def __init__(
        self,
        url: str,
        password: str | None = None,
        prefix: str = "servekit:rl:",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        # A password in the url wins over `password` (redis-py's rule for url options).
        self._client, self._where = connect(url, password, timeout_s, max_connections)
        self._script = self._client.register_script(SCRIPT)
        self._prefix = prefix

    async def admit(
        self,
        subject: str,
        limits: RateLimits,
        texts: int,
        also: Sequence[tuple[str, RateLimits]] = (),
    ) -> Decision:
        """Take one request and `texts` texts from `subject`'s buckets and month and from
        each of `also`'s, or nothing when any of them is short (see `stores.ratelimit`);
        one round trip."""
        charged = charges(subject, limits, texts, also)
        if isinstance(charged, Decision):
            return charged
        keys: list[str] = []
        args = [str(texts)]
        for who, lim in charged:
            tagged = self._tagged(who)
            keys += [f"{tagged}:b", f"{tagged}:m:"]
            args += [_arg(lim.requests_per_s), _arg(lim.texts_per_s), _arg(lim.monthly_texts)]
        try:
            reply = await self._script(keys=keys, args=args)
        except RedisError as e:
            raise LimiterUnavailable(
                failure("rate limit store", self._where, e, self._client)
            ) from e
        values = [float(v) for v in reply]
        checks: list[Check] = []
        for _, lim in charged:
            named = _named(lim)
            checks += _checks(named, values[: 3 * len(named)])
            values = values[3 * len(named) :]
        if values:
            raise LimiterUnavailable("rate limit script answered more values than checked")
        return decide(checks)

    def _tagged(self, subject: str) -> str:
        """A subject's key prefix, its tenant as the hash tag: a key's subject
        (`tn_x/key_y`) and its tenant's land in one Redis Cluster slot, which one
        script over both needs."""
        tenant, _, rest = subject.partition("/")
        return f"{self._prefix}{{{tenant}}}{'/' + rest if rest else ''}"

    async def close(self) -> None:
        """Close the connections."""
        await self._client.aclose()


def _arg(value: float | None) -> str:
    """A limit as the script reads it: '' when not checked."""
    return "" if value is None else repr(float(value))


def _named(limits: RateLimits) -> list[tuple[str, float, float]]:
    """The limits the script checks for one subject, in its order, with their sizes and
    windows (`Decision.window_s`)."""
    named: list[tuple[str, float, float]] = []
    if limits.requests_per_s is not None:
        rate = limits.requests_per_s
        named.append(("requests", capacity(rate), window(rate)))
    if limits.texts_per_s is not None:
        rate = limits.texts_per_s
        named.append(("texts", capacity(rate), window(rate)))
    if limits.monthly_texts is not None:
        named.append(("monthly", float(limits.monthly_texts), 0.0))
    return named


def _checks(named: list[tuple[str, float, float]], values: list[float]) -> list[Check]:
    """One subject's (wait, remaining, reset) triples, in the order the script checked."""
    if len(values) != 3 * len(named):
        raise LimiterUnavailable(f"rate limit script answered {len(values)} values")
    checks: list[Check] = []
    for i, (policy, limit, window_s) in enumerate(named):
        wait, remaining, reset = values[3 * i : 3 * i + 3]
        never = wait < 0  # the script's mark of a take larger than the bucket
        wait = 0.0 if never else wait
        checks.append(Check(policy, limit, remaining, reset, wait, never, window_s))
    return checks
