"""How many HTTP requests a replica holds at once, and when two last overlapped.

A replica answering one request at a time (one caller, one connection: a product
backend calling search on a user's keystroke) gains from running a small model call on
its event loop: no hand-off to an inference thread and back, no thread waking on a core
that went idle. Under concurrent load the same run would stall the loop that parses the
next requests and fills the next batches, so it is allowed only while the replica
has served one caller at a time for `quiet_s`: one overlap, and the replica's inline
versions go back to their threads for that long.

Requests in flight alone cannot tell: while a run holds the loop, the next callers'
requests wait unparsed in their sockets, so each request is alone in the handler once
the loop runs them. The connection can: an HTTP/1.1 connection carries one request at a
time, so callers served at once come on as many connections (from the proxy in front, one
per request in flight). A request on another connection than the last one within
`quiet_s` counts as an overlap too (a caller opening a connection per request only loses
the shortcut). Nor can idle time: under CPU contention the loop itself waits for a core.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

# How long after two requests overlapped the replica counts as concurrent.
QUIET_S = 0.5
Client = object  # ASGI scope "client": (host, port), or None


class Traffic:
    """Requests in flight (entered, not yet left), the connection of the last one and
    when two last overlapped."""

    def __init__(
        self, quiet_s: float = QUIET_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.quiet_s = quiet_s
        self._clock = clock
        self.in_flight = 0
        self._overlapped_at = -float("inf")
        self._last: Client = None
        self._last_at = -float("inf")

    def enter(self, client: Client = None, concurrent: bool = False) -> None:
        """A request arrived on the connection from `client` (host, port); `concurrent`:
        its caller says it is not serving one request at a time."""
        now = self._clock()
        self.in_flight += 1
        if (
            concurrent
            or self.in_flight > 1
            or (client != self._last and now - self._last_at < self.quiet_s)
        ):
            self._overlapped_at = now
        self._last, self._last_at = client, now

    def leave(self) -> None:
        """A request was answered (or failed)."""
        self.in_flight = max(0, self.in_flight - 1)

    def sequential(self) -> bool:
        """Whether the replica holds at most one request and none overlapped lately."""
        return self.in_flight <= 1 and self._clock() - self._overlapped_at >= self.quiet_s


# The replica's own: its HTTP entry counts requests, its inline versions read it (one
# replica per process).
REPLICA_TRAFFIC = Traffic()
# Who this process is to the dedicated versions it calls: a replica serving one request
# at a time names itself with each call, so a version's replica can tell one caller at a
# time from several (gRPC calls share one connection).
CALLER_ID = uuid.uuid4().hex


def caller_if_sequential() -> str | None:
    """This process's caller id while its replica serves one request at a time."""
    return CALLER_ID if REPLICA_TRAFFIC.sequential() else None
