"""Requests in flight: when a replica counts as serving one request at a time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.http.hot import HotRoutes
from deployments.replicas.traffic import Traffic
from tests.unit.stores.fake_clock import FakeClock


def test_one_at_a_time_is_sequential_an_overlap_is_remembered() -> None:
    clock = FakeClock()
    traffic = Traffic(quiet_s=0.5, clock=clock)
    assert traffic.sequential()
    for _ in range(3):  # one caller, one request after the other
        traffic.enter()
        assert traffic.sequential()
        traffic.leave()
    traffic.enter()
    traffic.enter()  # a second caller while the first is served
    assert not traffic.sequential()
    traffic.leave()
    assert not traffic.sequential()  # one left in flight, but they overlapped just now
    clock.now += 0.4
    assert not traffic.sequential()
    clock.now += 0.1
    assert traffic.sequential()
    traffic.leave()
    traffic.leave()  # never below zero
    assert traffic.in_flight == 0


def test_a_request_on_another_connection_is_an_overlap() -> None:
    """While a run holds the loop, the next callers' requests wait in their sockets and
    reach the handler one by one: their connections tell that they came together."""
    clock = FakeClock()
    traffic = Traffic(quiet_s=0.5, clock=clock)
    for _ in range(3):  # one caller on one kept-alive connection
        traffic.enter(("127.0.0.1", 5001))
        assert traffic.sequential()
        traffic.leave()
        clock.now += 0.003
    traffic.enter(("127.0.0.1", 5002))  # another connection, right after
    assert not traffic.sequential()
    traffic.leave()
    clock.now += 0.6
    traffic.enter(("127.0.0.1", 5002))  # a caller alone again for a while
    assert traffic.sequential()
    traffic.leave()
    clock.now += 0.6
    traffic.enter(("127.0.0.1", 5003))  # a new connection after a quiet spell
    assert traffic.sequential()


def test_every_http_call_is_counted_until_it_ends_even_when_it_fails() -> None:
    traffic = Traffic(quiet_s=10)
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(traffic.in_flight)
        if scope.get("path") == "/fails":
            raise RuntimeError("boom")

    routes = HotRoutes(app, {}, traffic)

    async def run() -> None:
        client = ("127.0.0.1", 5001)
        await routes({"type": "http", "path": "/v1/models", "client": client}, None, None)
        with pytest.raises(RuntimeError):
            await routes({"type": "http", "path": "/fails", "client": client}, None, None)
        await routes({"type": "lifespan"}, None, None)  # not a request

    asyncio.run(run())
    assert seen == [1, 1, 0]
    assert traffic.in_flight == 0
    assert traffic.sequential()
