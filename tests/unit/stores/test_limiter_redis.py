"""What only the Redis limiter promises: replicas share the limits, one round trip per
request on the server's clock, keys that expire, and a bounded, clear failure when the
server is down, stuck or refuses the password."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from datetime import UTC, datetime

import pytest

from stores._ratelimit import decide, month_key, next_month_start
from stores.ratelimit import ALLOWED, Decision, LimiterUnavailable
from stores.ratelimit_redis import _CALENDAR, SCRIPT, RedisLimiter, _checks
from stores.tenants import RateLimits
from tests.conftest import free_port
from tests.redis_server import RedisServer

# What the script itself calls.
SCRIPT_COMMANDS = {"time", "hmget", "get", "del", "hset", "pexpire", "incrby", "expireat"}
LIMITS = RateLimits(requests_per_s=10, texts_per_s=100, monthly_texts=1000)


@pytest.fixture
def subject() -> str:
    return f"tn_{uuid.uuid4().hex[:12]}"


def test_two_replicas_share_one_bucket(redis_url: str, subject: str) -> None:
    async def body() -> None:
        replicas = [RedisLimiter(redis_url), RedisLimiter(redis_url)]
        try:
            # Two requests of 5 texts fill the bucket, which takes 0.5 s to refill one.
            bucket = RateLimits(texts_per_s=10)
            answers = [(await replicas[i % 2].admit(subject, bucket, 5)).allowed for i in range(4)]
            assert answers == [True, True, False, False]
            month = RateLimits(monthly_texts=10)
            answers = [
                (await replicas[i % 2].admit(subject + "/m", month, 1)).allowed for i in range(12)
            ]
            assert answers == [True] * 10 + [False] * 2
        finally:
            for replica in replicas:
                await replica.close()

    asyncio.run(body())


def test_one_round_trip_per_request(redis_url: str, subject: str) -> None:
    server = RedisServer(int(redis_url.rsplit(":", 1)[1].split("/")[0]))

    async def body() -> None:
        limiter = RedisLimiter(redis_url)
        try:
            await limiter.admit(subject, LIMITS, 1)  # connects and loads the script
            with server.client() as client:
                client.config_resetstat()
                for _ in range(5):
                    await limiter.admit(subject, LIMITS, 1)
                stats = client.info("commandstats")
            # Commands inside the script are counted too; of the client's, only EVALSHA.
            calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
            assert calls["evalsha"] == 5
            assert set(calls) - SCRIPT_COMMANDS - {"config|resetstat", "info"} == {"evalsha"}
        finally:
            await limiter.close()

    asyncio.run(body())


def test_a_burst_shares_a_few_connections(own_server: RedisServer, subject: str) -> None:
    async def body() -> None:
        # (a patient timeout: a busy machine makes the queue for 4 connections slow)
        limiter = RedisLimiter(own_server.url, max_connections=4, timeout_s=2.0)
        try:
            limits = RateLimits(monthly_texts=100)
            decisions = await asyncio.gather(
                *(limiter.admit(subject, limits, 1) for _ in range(200))
            )
            assert sum(d.allowed for d in decisions) == 100
            with own_server.client() as client:
                assert client.info("clients")["connected_clients"] <= 4 + 1  # + this one
        finally:
            await limiter.close()

    asyncio.run(body())


def test_keys_carry_the_subject_and_expire(redis_url: str, subject: str) -> None:
    server = RedisServer(int(redis_url.rsplit(":", 1)[1].split("/")[0]))

    async def body() -> None:
        limiter = RedisLimiter(redis_url, prefix="t:")
        try:
            assert (await limiter.admit(subject, LIMITS, 5)).allowed
        finally:
            await limiter.close()

    asyncio.run(body())
    now = time.time()
    with server.client() as client:
        keys = sorted(k.decode() for k in client.scan_iter(match=f"t:{{{subject}}}*"))
        assert keys == [f"t:{{{subject}}}:b", f"t:{{{subject}}}:m:{month_key(now)}"]
        # the buckets live until they are full again (0.1 s here, plus a second of slack)
        assert 0 < client.pttl(keys[0]) <= 1100
        # the month is kept a day past its end
        month_ttl = client.ttl(keys[1])
        assert month_ttl == pytest.approx(next_month_start(now) + 86400 - now, abs=2)
        assert int(client.get(keys[1]) or 0) == 5


def test_the_script_calendar_matches_python(redis_url: str) -> None:
    server = RedisServer(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    probe = _CALENDAR + "local ym, nxt = month_of(tonumber(ARGV[1]))\nreturn {ym, tostring(nxt)}"
    moments = [
        datetime(year, month, 1, tzinfo=UTC).timestamp() + delta
        for year in (1999, 2000, 2024, 2025, 2100)
        for month in range(1, 13)
        for delta in (-1, -0.25, 0, 0.5, 86400 * 14)
    ]
    with server.client() as client:
        for moment in moments:
            ym, nxt = client.eval(probe, 0, repr(moment))
            assert (int(ym), float(nxt)) == (month_key(moment), next_month_start(moment)), moment


def test_the_script_marks_a_take_larger_than_the_bucket_too_large(
    redis_url: str, subject: str
) -> None:
    """`admit` refuses such a request before the script runs; the script, run on its own
    (as another caller of it could), says the same: the -1 mark, nothing written."""
    server = RedisServer(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    keys = [f"servekit:rl:{{{subject}}}:b", f"servekit:rl:{{{subject}}}:m:"]
    with server.client() as client:
        reply = client.eval(SCRIPT, 2, *keys, "6", "10.0", "5.0", "100")
        assert [float(v) for v in reply[3:6]] == [-1, 5, 0]  # never; full; nothing to refill
        assert client.exists(keys[0]) == 0
        assert not list(client.scan_iter(match=f"servekit:rl:{{{subject}}}*"))
    named = [("requests", 10.0, 1.0), ("texts", 5.0, 1.0), ("monthly", 100.0, 0.0)]
    checks = _checks(named, [float(v) for v in reply])
    assert [c.too_large for c in checks] == [False, True, False]
    assert decide(checks) == Decision(False, 0.0, "texts", 5, 5, 0, too_large=True)


def test_too_large_is_answered_without_the_server(subject: str) -> None:
    async def body() -> None:
        limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
        try:
            refused = await limiter.admit(subject, RateLimits(texts_per_s=50), 100)
            assert (refused.too_large, refused.limit) == (True, 50)
            with pytest.raises(LimiterUnavailable):  # one that fits asks the server
                await limiter.admit(subject, RateLimits(texts_per_s=50), 50)
        finally:
            await limiter.close()

    asyncio.run(body())


def test_no_limits_need_no_server(subject: str) -> None:
    async def body() -> None:
        limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
        try:
            assert await limiter.admit(subject, RateLimits(), 5) is ALLOWED
        finally:
            await limiter.close()

    asyncio.run(body())


def test_a_server_that_is_down_raises_limiter_unavailable(
    own_server: RedisServer, subject: str
) -> None:
    async def body() -> None:
        limiter = RedisLimiter(own_server.url)
        try:
            assert (await limiter.admit(subject, LIMITS, 1)).allowed
            own_server.stop()
            started = time.monotonic()
            with pytest.raises(LimiterUnavailable, match=f"127.0.0.1:{own_server.port}"):
                await limiter.admit(subject, LIMITS, 1)
            assert time.monotonic() - started < 1.0
            own_server.start()  # back, empty: the pooled connection is replaced
            assert (await limiter.admit(subject, LIMITS, 1)).allowed
        finally:
            await limiter.close()

    asyncio.run(body())


def test_a_server_that_never_was_raises_limiter_unavailable(subject: str) -> None:
    async def body() -> None:
        limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(LimiterUnavailable, match="ConnectionError"):
                await limiter.admit(subject, LIMITS, 1)
        finally:
            await limiter.close()

    asyncio.run(body())


def test_a_stuck_server_costs_at_most_the_timeout(own_server: RedisServer, subject: str) -> None:
    assert own_server.proc is not None
    pid = own_server.proc.pid

    async def body() -> None:
        limiter = RedisLimiter(own_server.url)
        try:
            assert (await limiter.admit(subject, LIMITS, 1)).allowed
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(LimiterUnavailable, match="Timeout"):
                    await limiter.admit(subject, LIMITS, 1)
                assert time.monotonic() - started < 0.6
            finally:
                os.kill(pid, signal.SIGCONT)
        finally:
            await limiter.close()

    asyncio.run(body())


def test_a_password_protected_server(redis_with_password: RedisServer, subject: str) -> None:
    password = redis_with_password.password
    assert password is not None

    async def body() -> None:
        good = RedisLimiter(redis_with_password.url, password=password)
        wrong = RedisLimiter(redis_with_password.url, password="not-" + password)
        none = RedisLimiter(redis_with_password.url)
        try:
            assert (await good.admit(subject, LIMITS, 1)).allowed
            for limiter in (wrong, none):
                with pytest.raises(LimiterUnavailable) as caught:
                    await limiter.admit(subject, LIMITS, 1)
                assert password not in str(caught.value)
        finally:
            for limiter in (good, wrong, none):
                await limiter.close()

    asyncio.run(body())


def test_a_password_in_the_url_is_not_repeated(
    redis_with_password: RedisServer, subject: str
) -> None:
    password = redis_with_password.password
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"  # nothing listens there

    async def body() -> None:
        limiter = RedisLimiter(url)
        try:
            with pytest.raises(LimiterUnavailable) as caught:
                await limiter.admit(subject, LIMITS, 1)
            assert str(password) not in str(caught.value)
        finally:
            await limiter.close()

    asyncio.run(body())


def test_a_store_error_that_repeats_the_password_is_masked() -> None:
    """redis-py's messages do not repeat the password today; the stores' messages make
    sure, whether it came in the url or on its own."""
    from redis.exceptions import ResponseError

    from stores._redis import connect, failure

    for url, password in (
        ("redis://:s3cr3t-pw@127.0.0.1:1/0", None),
        ("redis://127.0.0.1:1/0", "s3cr3t-pw"),
    ):
        client, where = connect(url, password, 1.0, 1)
        message = failure("rate limit store", where, ResponseError("bad auth s3cr3t-pw"), client)
        assert message == "rate limit store 127.0.0.1:1/0 failed: ResponseError: bad auth ***"
