"""Direct calls between an ingress and a dedicated version's replicas, on real sockets
in one event loop: answers, errors, the token, draining, lost connections, the caps,
and the fall back to Serve's handle."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from deployments.errors import InferenceFailed, Overloaded, Timeout
from deployments.replicas import direct
from deployments.replicas.direct import (
    DirectPool,
    DirectServer,
    DirectUnavailable,
    KVStore,
    RemoteFailure,
    deployment_prefix,
)
from deployments.replicas.remote import DedicatedBackend

PREFIX = deployment_prefix("servekit", "minilm-v2")


class MemoryKV(KVStore):
    """The entries in a dict (Ray's store in the replicas)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def entries(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}


class Version:
    """Stands in for `ModelServer.embed`: answers, raises, or waits when told."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.calls: list[tuple[Any, ...]] = []

    async def embed(self, texts: list[str], timeout_s: float, caller: str | None) -> Any:
        self.calls.append((texts, timeout_s, caller))
        await self.release.wait()
        if texts == ["overloaded"]:
            raise Overloaded("64 texts already wait for this version, retry later")
        if texts == ["broken"]:
            raise ValueError("the model broke")
        return [[float(len(t))] for t in texts], [len(t) for t in texts]


async def _pair(
    kv: MemoryKV, name: str = "r1", cap: int = 256
) -> tuple[Version, DirectServer, DirectPool]:
    version = Version()
    server = DirectServer(version, PREFIX + name, "127.0.0.1", cap, kv=kv)
    await server.start()
    pool = DirectPool(PREFIX, kv=kv)
    await pool.refresh()
    return version, server, pool


def test_a_call_is_answered_over_the_connection() -> None:
    async def run() -> None:
        kv = MemoryKV()
        version, server, pool = await _pair(kv)
        answer = await pool.call("embed", (["red shoes", "a"], 5.0, None), 5.0)
        assert answer == ([[9.0], [1.0]], [9, 1])
        assert version.calls == [(["red shoes", "a"], 5.0, None)]
        assert (pool.calls, server.served, server.in_flight) == (1, 1, 0)
        # Many at once on the one connection, each answer to its own caller.
        texts = [[f"t{'x' * i}"] for i in range(50)]
        answers = await asyncio.gather(*(pool.call("embed", (t, 5.0, None), 5.0) for t in texts))
        assert [a[1] for a in answers] == [[len(t[0])] for t in texts]
        assert len(pool.peers) == 1
        assert server.served == 51
        await pool.close()
        await server.close(1.0)
        assert kv.data == {}  # the entry is gone with the replica

    asyncio.run(run())


def test_the_replicas_errors_arrive_as_themselves_or_as_a_failure() -> None:
    async def run() -> None:
        _, server, pool = await _pair(MemoryKV())
        with pytest.raises(Overloaded, match="64 texts already wait"):
            await pool.call("embed", (["overloaded"], 5.0, None), 5.0)
        with pytest.raises(RemoteFailure, match="ValueError: the model broke"):
            await pool.call("embed", (["broken"], 5.0, None), 5.0)
        with pytest.raises(RemoteFailure, match="no direct method 'wedge'"):
            await pool.call("wedge", (), 5.0)
        assert server.in_flight == 0
        await pool.close()
        await server.close(1.0)

    asyncio.run(run())


def test_a_connection_without_the_token_is_closed() -> None:
    async def run() -> None:
        kv = MemoryKV()
        version, server, pool = await _pair(kv)
        entry = json.loads(kv.data[PREFIX + "r1"])
        kv.data[PREFIX + "r1"] = json.dumps({**entry, "token": "0" * 32}).encode()
        await pool.refresh()  # the same replica at a changed token: a new peer
        with pytest.raises(DirectUnavailable, match="connection lost"):
            await pool.call("embed", (["red"], 5.0, None), 5.0)
        assert version.calls == []  # nothing ran
        # A raw connection that sends a call first is closed too.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(direct._frame(direct.CALL, 1, b"x"))
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        # Nor does one that announces a large frame before its token hold memory for it.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(direct._HEADER.pack(direct.HELLO, 100 * 1024 * 1024, 0) + b"x" * 1000)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        await pool.close()
        await server.close(1.0)

    asyncio.run(run())


def test_a_connection_that_never_sends_its_token_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A silent connection was held until its peer left: any host reaching the port
    could hold the replica's descriptors."""
    monkeypatch.setattr(direct, "HELLO_WITHIN_S", 0.2)

    async def run() -> None:
        kv = MemoryKV()
        version, server, pool = await _pair(kv)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
        writer.close()
        await pool.call("embed", (["red"], 5.0, None), 5.0)
        await asyncio.sleep(0.4)  # a greeted connection is kept past the deadline
        await pool.call("embed", (["red"], 5.0, None), 5.0)
        assert len(version.calls) == 2
        assert len(server._connections) == 1
        await pool.close()
        await server.close(1.0)

    asyncio.run(run())


def test_an_entry_not_written_again_is_not_called_then_forgotten() -> None:
    async def run() -> None:
        kv = MemoryKV()
        now = [1000.0]
        pool = DirectPool(PREFIX, kv=kv, clock=lambda: now[0])
        await pool.refresh()
        with pytest.raises(DirectUnavailable, match="no replica"):
            await pool.call("embed", (["red"], 5.0, None), 5.0)
        # The entry's own timestamp is the replica's clock, hours off here: only whether
        # it changes counts, by this pool's clock.
        entry = {"host": "127.0.0.1", "port": 9, "token": "t", "at": 5.0}
        kv.put(PREFIX + "r1", json.dumps(entry).encode())
        kv.put(PREFIX + "garbled", b"{not json")
        kv.put(deployment_prefix("servekit", "minilm-v1") + "r9", json.dumps(entry).encode())
        await pool.refresh()
        assert list(pool.peers) == [PREFIX + "r1"]
        assert pool.pick() is pool.peers[PREFIX + "r1"]
        now[0] += 9
        kv.put(PREFIX + "r1", json.dumps({**entry, "at": 7.0}).encode())  # a heartbeat
        await pool.refresh()
        now[0] += 9
        await pool.refresh()
        assert pool.pick() is not None  # written 9 s ago
        now[0] += 2
        await pool.refresh()
        assert pool.pick() is None  # 11 s: not called
        assert PREFIX + "r1" in kv.data
        now[0] += 50
        await pool.refresh()
        assert pool.peers == {}
        assert PREFIX + "r1" not in kv.data  # 61 s: removed from the store
        await pool.close()

    asyncio.run(run())


def test_a_refused_connection_sets_the_replica_aside_for_a_while() -> None:
    async def run() -> None:
        kv = MemoryKV()
        _, server, pool = await _pair(kv)
        await server.close(1.0)  # closed: its port refuses
        entry = {"host": "127.0.0.1", "port": server.port, "token": server.token}
        kv.put(PREFIX + "r1", json.dumps({**entry, "at": time.time()}).encode())
        await pool.refresh()
        with pytest.raises(DirectUnavailable, match="connect"):
            await pool.call("embed", (["red"], 5.0, None), 5.0)
        with pytest.raises(DirectUnavailable, match="no replica"):  # not tried again yet
            await pool.call("embed", (["red"], 5.0, None), 5.0)
        await pool.refresh()  # the same entry, written before the refusal
        with pytest.raises(DirectUnavailable, match="no replica"):
            await pool.call("embed", (["red"], 5.0, None), 5.0)
        # Written again after it (a replica that lives): tried again, and it answers.
        version = Version()
        again = DirectServer(version, PREFIX + "r1", "127.0.0.1", 256, kv=kv)
        await again.start()
        await pool.refresh()
        assert await pool.call("embed", (["red"], 5.0, None), 5.0) == ([[3.0]], [3])
        await again.close(1.0)
        await pool.close()

    asyncio.run(run())


def test_a_draining_replica_answers_what_it_holds_and_takes_nothing_new() -> None:
    async def run() -> None:
        kv = MemoryKV()
        version, server, pool = await _pair(kv)
        await pool.call("embed", (["warm"], 5.0, None), 5.0)  # connected
        version.release.clear()
        held = asyncio.ensure_future(pool.call("embed", (["held"], 5.0, None), 5.0))
        while server.in_flight == 0:
            await asyncio.sleep(0.001)
        closing = asyncio.ensure_future(server.close(5.0))
        while not pool.peers["servekit/minilm-v2/r1"].draining:
            await asyncio.sleep(0.001)
        with pytest.raises(DirectUnavailable, match="no replica"):
            await pool.call("embed", (["new"], 5.0, None), 5.0)
        assert not closing.done()  # still holds a call
        version.release.set()
        assert await held == ([[4.0]], [4])
        await closing
        assert kv.data == {}
        await pool.refresh()
        assert pool.peers == {}
        await pool.close()

    asyncio.run(run())


def test_a_call_lost_with_its_connection_says_so() -> None:
    async def run() -> None:
        kv = MemoryKV()
        version, server, pool = await _pair(kv)
        version.release.clear()
        call = asyncio.ensure_future(pool.call("embed", (["red"], 5.0, None), 5.0))
        while server.in_flight == 0:
            await asyncio.sleep(0.001)
        for connection in list(server._connections):
            connection.transport.abort()  # type: ignore[union-attr]
        with pytest.raises(DirectUnavailable, match="connection lost"):
            await call
        version.release.set()
        await asyncio.sleep(0.01)
        assert server.in_flight == 0  # the orphaned call was cancelled
        # Lost without a goodbye: set aside until the replica writes its entry again.
        with pytest.raises(DirectUnavailable, match="no replica"):
            await pool.call("embed", (["red"], 5.0, None), 5.0)
        await asyncio.to_thread(server._publish)  # its next heartbeat
        await pool.refresh()
        assert await pool.call("embed", (["red"], 5.0, None), 5.0) == ([[3.0]], [3])
        await pool.close()
        await server.close(1.0)

    asyncio.run(run())


def test_a_call_past_its_time_raises_timeout_and_a_late_answer_is_dropped() -> None:
    async def run() -> None:
        kv = MemoryKV()
        version, server, pool = await _pair(kv)
        version.release.clear()
        with pytest.raises(TimeoutError):
            await pool.call("embed", (["slow"], 0.05, None), 0.05)
        version.release.set()
        await asyncio.sleep(0.02)  # the late answer arrives and finds nobody
        assert await pool.call("embed", (["next"], 5.0, None), 5.0) == ([[4.0]], [4])
        await pool.close()
        await server.close(1.0)

    asyncio.run(run())


def test_calls_go_to_the_least_busy_replica_within_its_cap() -> None:
    async def run() -> None:
        kv = MemoryKV()
        first, server1, pool = await _pair(kv, "r1", cap=1)
        second = Version()
        server2 = DirectServer(second, PREFIX + "r2", "127.0.0.1", 1, kv=kv)
        await server2.start()
        await pool.refresh()
        first.release.clear()
        second.release.clear()
        calls = [asyncio.ensure_future(pool.call("embed", ([t], 5.0, None), 5.0)) for t in "ab"]
        while server1.in_flight + server2.in_flight < 2:
            await asyncio.sleep(0.001)
        assert (server1.in_flight, server2.in_flight) == (1, 1)  # one each
        with pytest.raises(DirectUnavailable, match="no replica"):  # both at their cap
            await pool.call("embed", (["c"], 5.0, None), 5.0)
        first.release.set()
        second.release.set()
        await asyncio.gather(*calls)
        await pool.close()
        await server1.close(1.0)
        await server2.close(1.0)

    asyncio.run(run())


class _Handle:
    """Serve's handle: records the calls it gets and answers them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, method: str) -> Any:
        calls = self.calls

        class _Method:
            def remote(self, *args: Any) -> Any:
                calls.append((method, *args))

                async def answer() -> Any:
                    return [[0.5]], [1]

                return answer()

        return _Method()


def test_the_backend_goes_through_the_handle_when_no_direct_way_is_open() -> None:
    async def run() -> None:
        kv = MemoryKV()
        handle = _Handle()
        backend = DedicatedBackend("minilm/v2", handle, 5.0, DirectPool(PREFIX, kv=kv))  # type: ignore[arg-type]
        backend._calls = handle  # type: ignore[assignment]  # already set up
        deadline = time.monotonic() + 5
        answer: Any = await backend.embed(["red"], deadline)
        assert answer == ([[0.5]], [1])  # no replica known
        assert [c[0] for c in handle.calls] == ["embed"]
        version = Version()
        server = DirectServer(version, PREFIX + "r1", "127.0.0.1", 256, kv=kv)
        await server.start()
        await backend.direct.refresh()  # type: ignore[union-attr]
        answer = await backend.embed(["red"], deadline)
        assert answer == ([[3.0]], [3])  # direct now
        assert len(handle.calls) == 1
        assert len(version.calls) == 1
        with pytest.raises(Overloaded, match=r"^minilm/v2: 64 texts"):
            await backend.embed(["overloaded"], deadline)
        with pytest.raises(InferenceFailed, match=r"^minilm/v2: the model failed"):
            await backend.embed(["broken"], deadline)
        version.release.clear()
        with pytest.raises(Timeout, match=r"^minilm/v2: no answer within 5 s"):
            await backend.embed(["slow"], time.monotonic() + 0.05)
        version.release.set()
        await backend.close()
        await server.close(1.0)

    asyncio.run(run())


def test_a_replica_outside_serve_opens_no_direct_way() -> None:
    assert direct.replica_server(object(), direct.VERSION_METHODS) is None
