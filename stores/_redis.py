"""What the Redis stores share: a client whose every call is bounded, and where it points
(for messages, never with the password a url may carry)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect(
    url: str, password: str | None, timeout_s: float, max_connections: int
) -> tuple[Redis, str]:
    """A client of at most `max_connections` pooled connections, each wait for one of
    them, each connect and each reply bounded by `timeout_s`, with one immediate retry on
    a broken connection (a pooled connection that outlived a Redis restart); and where it
    points. A password in the url wins over `password` (redis-py's rule for url options)."""
    pool = BlockingConnectionPool.from_url(
        url,
        password=password,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        # The asyncio client's own Retry: the synchronous one returns the call's
        # coroutine from its loop unawaited, so the error comes when the client awaits
        # it, outside the loop: nothing was retried, and each pooled connection failed
        # its first call after a Redis restart or failover.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool), location(pool.connection_kwargs)


def location(kwargs: dict[str, Any]) -> str:
    """Where the store is, for messages: never the password the url may carry."""
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def failure(what: str, where: str, error: Exception, client: Redis) -> str:
    """A message saying `what` at `where` failed, with the error's words and never the
    client's password (redis-py's messages do not repeat it; make sure)."""
    message = f"{what} {where} failed: {type(error).__name__}: {error}"
    password = client.connection_pool.connection_kwargs.get("password")
    return message.replace(str(password), "***") if password else message
