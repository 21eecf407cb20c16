"""Direct calls: the Ingress calls its other deployments' replicas (dedicated versions,
catalog shards) over a connection of its own, beside Serve's handle, which stays the
way in whenever this one is not open.

A handle call, even over the replicas' gRPC servers, costs about 1 ms of CPU on each
side (Serve's router, request wrapper and replica machinery; `bench/hop.py`): at one
connection it was a third of a dedicated request's time, and a sharded search makes
one or two on every shard. Here a call is one frame
each way on a kept TCP connection, read on each side's event loop: about 0.1 ms and
0.06 ms of CPU a side (README, "The dedicated placement's hop").

- **Finding the replicas.** Each callee replica listens on its node's address (any
  free port) and writes where, with a token drawn at start, to Ray's cluster KV store
  under its application, deployment and replica id; it writes it again every
  `HEARTBEAT_S`. An Ingress reads the deployment's entries every `REFRESH_S` and calls
  those written again within `STALE_S` by its own clock (it removes those unchanged
  for `FORGET_S`: replicas gone without a word). A connection's first frame must carry
  the token, or the replica closes it: only a process that can read the cluster's KV
  store can call, and only the methods its deployment lists (`VERSION_METHODS`,
  `SHARD_METHODS`).
- **Choosing one.** The replica with the fewest of this Ingress's calls in flight,
  below the deployment's `max_ongoing_requests`.
- **When this way is not open** (no replica known yet, all at their cap, a connection
  refused or lost, a replica draining), the call goes through Serve's handle, as
  before; a call lost after it was sent is sent again there (inference is idempotent),
  within the caller's deadline.
- **Draining.** A replica Serve stops says so on each connection (no new calls come)
  and answers the calls it holds before its process goes, within the deployment's
  `graceful_shutdown_timeout_s`.
- **Autoscaling.** Serve's autoscaler counts the calls that go through handles; a
  callee replica also reports the direct calls it holds (`record_autoscaling_stats`),
  and `deployments.replicas.direct_scaling:policy`, Serve's own rule over both counts,
  is the policy an autoscaling callee's `autoscaling_config` names (`servekit validate`
  refuses one that names none).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
import random
import secrets
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from deployments.errors import ServekitError
from deployments.observability.logs import get_logger
from deployments.replicas.direct_scaling import DIRECT_CALLS_METRIC

_log = get_logger("direct")

KV_NAMESPACE = "servekit_direct"
HEARTBEAT_S = 2.0
STALE_S = 10.0  # an entry not written again for this long is not called
FORGET_S = 60.0  # nor kept in the store
REFRESH_S = 1.0
CONNECT_TIMEOUT_S = 1.0
# The methods a direct call may name, per callee.
VERSION_METHODS = frozenset({"embed"})
SHARD_METHODS = frozenset({"sync", "term_stats", "term_stats_at", "candidates"})

# Frames: kind, body length, call id; then the body (pickled).
_HEADER = struct.Struct("!BIQ")
HELLO, CALL, OK, ERROR, GOAWAY = range(5)
MAX_FRAME_BYTES = 512 * 1024 * 1024
HELLO_MAX_BYTES = 256  # what a connection may send before its token is checked
HELLO_WITHIN_S = 10.0  # and how long it may take to: a silent connection is closed


class DirectUnavailable(Exception):
    """This way is not open for the call (no replica, refused, lost): use the handle."""


class RemoteFailure(Exception):
    """A replica raised something other than a servekit error (its type and text)."""


def _frame(kind: int, call_id: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(body), call_id) + body


class _Frames:
    """Cuts a byte stream into (kind, call id, body) frames."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self.max_bytes = max_bytes  # the largest frame body taken

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames = []
        offset = 0
        size = _HEADER.size
        while len(buffer) - offset >= size:
            kind, length, call_id = _HEADER.unpack_from(buffer, offset)
            if length > self.max_bytes:
                raise ValueError(f"frame of {length} bytes")
            end = offset + size + length
            if len(buffer) < end:
                break
            frames.append((kind, call_id, bytes(buffer[offset + size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames


def _error_body(error: BaseException) -> bytes:
    """What a failed call answers: a servekit error as its class and message (it then
    arrives as itself), anything else as its type's name and text."""
    if isinstance(error, ServekitError):
        return pickle.dumps((type(error), error.message), protocol=5)
    return pickle.dumps((None, f"{type(error).__name__}: {error}"), protocol=5)


def _error_from(body: bytes) -> Exception:
    cls, message = pickle.loads(body)
    if isinstance(cls, type) and issubclass(cls, ServekitError):
        error = cls.__new__(cls)
        ServekitError.__init__(error, message)
        return error
    return RemoteFailure(str(message))


# ---------------------------------------------------------------------------------
# The version replica's side


class DirectServer:
    """Serves `target`'s `methods` to direct callers (a coroutine function on the
    loop, a plain one in a thread, as Serve runs each); `key` names it in the KV store."""

    def __init__(
        self,
        target: Any,
        key: str,
        host: str,
        max_in_flight: int,
        kv: KVStore | None = None,
        methods: frozenset[str] = VERSION_METHODS,
    ) -> None:
        self.target = target
        self.methods = methods
        self.key = key
        self.host = host
        self.max_in_flight = max_in_flight
        self.token = secrets.token_hex(16)
        self.kv = kv if kv is not None else RayKV()
        self.in_flight = 0
        self.served = 0  # calls run to their end (answered, failed or dropped)
        self.answered: dict[str, int] = {}  # calls answered, by method
        self.port = 0
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_ServerConnection] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConnection(self), self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        await asyncio.to_thread(self._publish)
        self._heartbeat = loop.create_task(self._beat())
        _log.info("direct calls open", extra={"fields": {"key": self.key, "port": self.port}})

    def entry(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "token": self.token,
            "max_in_flight": self.max_in_flight,
            "at": time.time(),
        }

    def _publish(self) -> None:
        self.kv.put(self.key, json.dumps(self.entry()).encode())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if self.closing:
                return
            try:
                await asyncio.to_thread(self._publish)
            except Exception as e:  # the KV store away for a moment: next beat
                _log.warning("direct entry not written", extra={"fields": {"error": str(e)}})

    def started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def finished(self) -> None:
        self.in_flight -= 1
        self.served += 1
        if self.in_flight == 0:
            self._idle.set()

    async def close(self, timeout_s: float) -> None:
        """Stop taking calls, tell every caller, answer what is held (within
        `timeout_s`), then close the connections and remove the entry."""
        if self.closing:
            return
        self.closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._server is not None:
            self._server.close()
        try:
            await asyncio.to_thread(self.kv.delete, self.key)
        except Exception as e:
            _log.warning("direct entry not removed", extra={"fields": {"error": str(e)}})
        for connection in list(self._connections):
            connection.goaway()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            _log.warning(
                "direct calls still held at shutdown",
                extra={"fields": {"in_flight": self.in_flight}},
            )
        for connection in list(self._connections):
            connection.close()


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: DirectServer) -> None:
        self.server = server
        self.frames = _Frames(HELLO_MAX_BYTES)  # until the token is checked
        self.transport: asyncio.Transport | None = None
        self.greeted = False
        self.tasks: set[asyncio.Task[None]] = set()
        self._hello_timer: asyncio.TimerHandle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)
        self._hello_timer = asyncio.get_running_loop().call_later(HELLO_WITHIN_S, self._silent)

    def _silent(self) -> None:
        if not self.greeted:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._hello_timer.cancel()
        self.server._connections.discard(self)
        for task in self.tasks:  # nobody waits for these answers any more
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except ValueError:
            self.close()
            return
        for kind, call_id, body in frames:
            if not self.greeted:
                if kind != HELLO or not secrets.compare_digest(body, self.server.token.encode()):
                    self.close()
                    return
                self.greeted = True
                self.frames.max_bytes = MAX_FRAME_BYTES
                if self.server.closing:
                    self.goaway()
            elif kind == CALL:
                task = asyncio.get_running_loop().create_task(self._run(call_id, body))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self.close()
                return

    async def _run(self, call_id: int, body: bytes) -> None:
        server = self.server
        server.started()
        try:
            try:
                method, args = pickle.loads(body)
                if method not in server.methods:
                    raise RemoteFailure(f"no direct method {method!r}")
                function = getattr(server.target, method)
                if inspect.iscoroutinefunction(function):
                    result = await function(*args)
                else:  # a plain method runs in a thread, as Serve runs it
                    result = await asyncio.to_thread(function, *args)
                reply = _frame(OK, call_id, pickle.dumps(result, protocol=5))
                server.answered[method] = server.answered.get(method, 0) + 1
            except asyncio.CancelledError:
                raise
            except Exception as e:
                reply = _frame(ERROR, call_id, _error_body(e))
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(reply)
        finally:
            server.finished()

    def goaway(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(GOAWAY, 0))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------------------------
# The Ingress's side


class _ClientConnection(asyncio.Protocol):
    def __init__(self, peer: _Peer) -> None:
        self.peer = peer
        self.frames = _Frames()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(_frame(HELLO, 0, self.peer.token.encode()))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer.connection is self:
            self.peer.connection = None
        self.peer.lost()  # unless the replica said goodbye: it may be gone
        for future in self.pending.values():
            if not future.done():
                future.set_exception(DirectUnavailable("connection lost"))
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except ValueError:
            self.close()
            return
        for kind, call_id, body in frames:
            if kind == GOAWAY:
                self.peer.draining = True
                continue
            future = self.pending.pop(call_id, None)
            if future is None or future.done():
                continue  # its caller gave up
            try:
                if kind == OK:
                    future.set_result(pickle.loads(body))
                else:
                    future.set_exception(_error_from(body))
            except Exception as e:  # an answer that does not unpickle
                future.set_exception(RemoteFailure(f"unreadable answer: {e}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, method: str, args: tuple[Any, ...]) -> tuple[int, asyncio.Future[Any]]:
        self.next_id += 1
        call_id = self.next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        self.transport.write(  # type: ignore[union-attr]
            _frame(CALL, call_id, pickle.dumps((method, args), protocol=5))
        )
        return call_id, future


@dataclass
class _Peer:
    """One callee replica as this Ingress sees it."""

    key: str
    host: str
    port: int
    token: str
    max_in_flight: int
    at: float  # the entry's own timestamp, as last read (the replica's clock)
    changed: float  # when this Ingress last saw that timestamp change (its own clock)
    in_flight: int = 0
    draining: bool = False
    # Set when its connection was refused or lost other than by draining, to the entry's
    # timestamp then: not tried again until the replica writes a later one (it lives).
    lost_after: float | None = None
    connection: _ClientConnection | None = None
    connecting: asyncio.Future[_ClientConnection] | None = field(default=None, repr=False)

    def usable(self, now: float) -> bool:
        return (
            not self.draining
            and self.lost_after is None
            and now - self.changed <= STALE_S
            and self.in_flight < self.max_in_flight
        )

    def lost(self) -> None:
        if not self.draining:
            self.lost_after = self.at

    def release(self) -> None:
        """Close its connection once no call of this Ingress is in flight on it (a
        replica no longer listed; the last call to end closes it otherwise)."""
        if self.connection is not None and self.in_flight == 0:
            self.connection.close()


class DirectPool:
    """A deployment's replicas that take direct calls, as one Ingress sees them.
    `prefix`: the KV keys of the deployment's entries (`deployment_prefix`)."""

    def __init__(
        self,
        prefix: str,
        kv: KVStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = prefix
        self.kv = kv if kv is not None else RayKV()
        self.clock = clock
        self.peers: dict[str, _Peer] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False
        self.calls = 0  # answered directly, for tests and operators

    def start(self) -> None:
        """Read the entries now and every `REFRESH_S` (on the running loop)."""
        if self._refresher is None and not self._closed:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while not self._closed:
            try:
                await self.refresh()
            except Exception as e:  # the KV store away for a moment: keep what is known
                _log.warning("direct entries not read", extra={"fields": {"error": str(e)}})
            await asyncio.sleep(REFRESH_S)

    async def refresh(self) -> None:
        """Read the deployment's entries. Each entry's age is judged by this Ingress's
        own clock (when its timestamp last changed), so clocks apart between nodes do
        not matter; one unchanged for `FORGET_S` is a replica gone without a word, and
        its entry is removed."""
        entries = await asyncio.to_thread(self.kv.entries, self.prefix)
        now = self.clock()
        for key in [k for k in self.peers if k not in entries]:
            self._drop(key)
        for key, raw in entries.items():
            try:
                entry = json.loads(raw)
                address = (str(entry["host"]), int(entry["port"]), str(entry["token"]))
                at, cap = float(entry["at"]), int(entry.get("max_in_flight", 256))
            except (ValueError, KeyError, TypeError):
                continue
            peer = self.peers.get(key)
            if peer is not None and (peer.host, peer.port, peer.token) != address:
                self._drop(key)  # the same replica id at a new address: a new process
                peer = None
            if peer is None:
                self.peers[key] = _Peer(key, *address, max_in_flight=cap, at=at, changed=now)
            elif at != peer.at:
                peer.at, peer.changed = at, now
                if peer.lost_after is not None and at > peer.lost_after:
                    peer.lost_after = None  # written since it was lost: it lives
            elif now - peer.changed > FORGET_S:
                self._drop(key)
                await asyncio.to_thread(self.kv.delete, key)

    def _drop(self, key: str) -> None:
        self.peers.pop(key).release()

    def pick(self) -> _Peer | None:
        """The usable replica with the fewest of this Ingress's calls in flight."""
        now = self.clock()
        best: list[_Peer] = []
        for peer in self.peers.values():
            if not peer.usable(now):
                continue
            if not best or peer.in_flight < best[0].in_flight:
                best = [peer]
            elif peer.in_flight == best[0].in_flight:
                best.append(peer)
        if not best:
            return None
        return best[0] if len(best) == 1 else random.choice(best)

    async def _connection(self, peer: _Peer) -> _ClientConnection:
        if peer.connection is not None and not peer.connection.closed:
            return peer.connection
        if peer.connecting is None:
            peer.connecting = asyncio.ensure_future(self._connect(peer))
        try:
            return await asyncio.shield(peer.connecting)
        finally:
            if peer.connecting is not None and peer.connecting.done():
                peer.connecting = None

    async def _connect(self, peer: _Peer) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, connection = await loop.create_connection(
                    lambda: _ClientConnection(peer), peer.host, peer.port
                )
        except (OSError, TimeoutError) as e:
            peer.lost()
            raise DirectUnavailable(f"connect: {e}") from e
        peer.connection = connection
        return connection

    async def call(self, method: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        """`method(*args)` on one replica within `timeout_s`. Raises `DirectUnavailable`
        when this way is not open or the call was lost (send it through the handle),
        `TimeoutError` past `timeout_s`, and what the replica raised."""
        self.start()
        peer = self.pick()
        if peer is None:
            raise DirectUnavailable("no replica takes direct calls")
        peer.in_flight += 1
        try:
            async with asyncio.timeout(timeout_s):
                connection = await self._connection(peer)
                call_id, future = connection.send(method, args)
                try:
                    result = await future
                finally:
                    connection.pending.pop(call_id, None)
        finally:
            peer.in_flight -= 1
            if peer.key not in self.peers:
                peer.release()
        self.calls += 1
        return result

    async def close(self) -> None:
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
        for peer in self.peers.values():
            if peer.connection is not None:
                peer.connection.close()
        self.peers.clear()


# ---------------------------------------------------------------------------------
# Where the entries live


class KVStore:
    """Entries by key: `put`, `delete`, and `entries(prefix)` (key -> value)."""

    def put(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def entries(self, prefix: str) -> dict[str, bytes]:
        raise NotImplementedError


class RayKV(KVStore):
    """Ray's cluster KV store (held by the GCS), the one every node of the cluster reads."""

    def put(self, key: str, value: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)

    def delete(self, key: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)

    def entries(self, prefix: str) -> dict[str, bytes]:
        from ray.experimental import internal_kv

        found: dict[str, bytes] = {}
        for key in internal_kv._internal_kv_list(prefix, namespace=KV_NAMESPACE):
            value = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
            if value is not None:
                found[key.decode() if isinstance(key, bytes) else key] = value
        return found


def deployment_prefix(app: str, deployment: str) -> str:
    """The KV keys of a deployment's replicas start with this."""
    return f"{app}/{deployment}/"


def replica_server(target: Any, methods: frozenset[str]) -> DirectServer | None:
    """A `DirectServer` for the Serve replica this runs in (None outside one)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException
    from ray.util import get_node_ip_address

    try:
        context = serve.get_replica_context()
    except RayServeException:
        return None
    key = deployment_prefix(context.app_name, context.deployment) + context.replica_id.unique_id
    config = getattr(context, "_deployment_config", None)
    cap = int(getattr(config, "max_ongoing_requests", 0) or 256)
    return DirectServer(target, key, get_node_ip_address(), cap, methods=methods)


def drain_s() -> float:
    """How long a stopping replica answers the direct calls it holds: half its
    deployment's `graceful_shutdown_timeout_s`, at least 1 s."""
    from ray import serve

    try:
        config = serve.get_replica_context()._deployment_config
        return max(1.0, float(config.graceful_shutdown_timeout_s) / 2)
    except Exception:
        return 5.0


class DirectCallee:
    """What a deployment's class takes on to be called directly: it calls `open_direct`
    from its constructor, which Serve runs on the replica's event loop (outside a
    replica nothing opens, and Serve's handle serves every call)."""

    direct: DirectServer | None = None

    def open_direct(self, methods: frozenset[str]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on a replica's event loop: Serve's handle only
        server = replica_server(self, methods)
        if server is None:
            return

        async def open_it() -> None:
            try:
                await server.start()
                self.direct = server
            except Exception as e:  # Serve's handle still serves every call
                _log.warning("direct calls not opened", extra={"fields": {"error": str(e)}})

        self._direct_opening = loop.create_task(open_it())  # held: the loop keeps weak ones

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The direct calls held now, for the autoscaler (`direct_scaling.policy`)."""
        return {DIRECT_CALLS_METRIC: float(self.direct.in_flight if self.direct else 0)}

    def direct_stats(self) -> dict[str, Any]:
        """Whether direct calls are open here, the calls held now, those run to their
        end, and those answered by method."""
        from ray import serve

        replica = str(serve.get_replica_context().replica_id.unique_id)
        server = self.direct
        if server is None:
            return {"replica": replica, "open": False, "in_flight": 0, "served": 0, "answered": {}}
        return {"replica": replica, "open": True, "in_flight": server.in_flight,
                "served": server.served, "answered": dict(server.answered)}  # fmt: skip

    def close_direct(self) -> Coroutine[Any, Any, None] | None:
        """Callers told to stop and the calls held answered, for Serve's replica
        shutdown to await; None when nothing is open (or it is closing already), so a
        second call (the garbage collector's `__del__`) leaves no coroutine unawaited."""
        if self.direct is None or self.direct.closing:
            return None
        return self.direct.close(drain_s())
