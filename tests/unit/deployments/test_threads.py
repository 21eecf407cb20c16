"""Versions sharing the inference threads: a run on a full session of several threads
never overlaps another batch, of any version (three busy threads on two cores would
stall its barriers, what busy lanes exist to avoid)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from deployments.replicas.batch_cost import BatchCost
from deployments.replicas.inline import InlineBatcher, _Pending
from deployments.replicas.threads import SharedThreads
from tests.unit.deployments.fakes import BatchRecorder, FakeRuntime


@pytest.fixture
def threads() -> Iterator[SharedThreads]:
    threads = SharedThreads(2)
    yield threads
    threads.shutdown()


def _batcher(runtime: FakeRuntime, threads: SharedThreads) -> InlineBatcher:
    return InlineBatcher(runtime, BatchRecorder(), threads)  # type: ignore[arg-type]


async def _until(condition: object, timeout_s: float = 2.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.002)


def test_another_versions_request_waits_for_a_full_session_run(threads: SharedThreads) -> None:
    """v1's lone request runs on its full session (two threads); v2's, arriving
    meanwhile, does not start a lane beside it: it starts once v1's run ends, and, the
    threads then idle, on its own full session."""
    r1, r2 = FakeRuntime(busy_lanes=2), FakeRuntime(busy_lanes=2)
    v1, v2 = _batcher(r1, threads), _batcher(r2, threads)

    async def scenario() -> None:
        r1.gate.clear()
        first = asyncio.create_task(v1.embed(["v1 alone"]))
        await _until(lambda: r1.runs)
        assert (r1.busy_runs, threads.free()) == ([False], 0)
        second = asyncio.create_task(v2.embed(["v2 meanwhile"]))
        await asyncio.sleep(0.05)
        assert not r2.runs  # no lane beside the full-session run
        assert (v2.queued_texts, threads.wide) == (1, True)
        r1.gate.set()
        await asyncio.gather(first, second)

    try:
        asyncio.run(scenario())
    finally:
        r1.gate.set()
    assert r2.busy_runs == [False]
    assert (threads.free(), threads.wide) == (2, False)


def test_a_lone_request_beside_another_versions_batch_runs_on_a_lane(
    threads: SharedThreads,
) -> None:
    """v2's full session has one thread (`intra_op_threads: 1`): its run holds one
    thread, as a lane does. v1's lone request, arriving meanwhile, starts at once, on a
    lane rather than on its two-thread full session."""
    r1 = FakeRuntime(busy_lanes=2)
    r2 = FakeRuntime(busy_lanes=2, intra_op_threads=1)
    v1, v2 = _batcher(r1, threads), _batcher(r2, threads)

    async def scenario() -> None:
        r2.gate.clear()
        first = asyncio.create_task(v2.embed(["v2 alone"]))
        await _until(lambda: r2.runs)
        assert (r2.busy_runs, threads.free()) == ([False], 1)
        await asyncio.wait_for(v1.embed(["v1 beside it"]), 2.0)  # while v2's still runs
        assert not first.done()
        assert r1.busy_runs == [True]
        r2.gate.set()
        await first

    try:
        asyncio.run(scenario())
    finally:
        r2.gate.set()
    assert r1.busy_runs == [True]


def test_a_version_without_lanes_keeps_its_turn_until_every_thread_frees(
    threads: SharedThreads,
) -> None:
    """v1 (two lanes) holds both threads. A request to v0, whose runtime has no lanes
    and a full session of several threads, arrives, then one to v1. The first thread to
    free stays free (v0 needs both; v1's later request does not take it); the second
    gives v0 its run, and v1's request starts only once that ends."""
    r0, r1 = FakeRuntime(busy_lanes=0), FakeRuntime(busy_lanes=2)
    v0, v1 = _batcher(r0, threads), _batcher(r1, threads)

    async def scenario() -> None:
        threads.hold(1, v1, 8, busy=True)
        threads.hold(2, v1, 8, busy=True)
        r0.gate.clear()
        older = asyncio.create_task(v0.embed(["v0 first"]))
        await asyncio.sleep(0.01)
        newer = asyncio.create_task(v1.embed(["v1 after"]))
        await asyncio.sleep(0.01)
        threads.release(1)
        await asyncio.sleep(0.05)
        assert (r0.runs, r1.runs, threads.free()) == ([], [], 1)
        assert v0.waits_for_every_thread()
        threads.release(2)
        await _until(lambda: r0.runs)
        assert (threads.free(), threads.wide) == (0, True)
        await asyncio.sleep(0.05)
        assert not r1.runs  # not beside v0's full-session run
        r0.gate.set()
        await asyncio.gather(older, newer)

    try:
        asyncio.run(scenario())
    finally:
        r0.gate.set()
    assert (r0.busy_runs, r1.runs) == ([False], [["v1 after"]])
    assert threads.free() == 2


# ---- the expected wait, on a clock that stands still ------------------------------


def _line(a: float, b: float) -> BatchCost:
    cost = BatchCost()
    for n in (1, 8, 3, 16, 1, 32, 5):
        cost.observe(n, a + b * n)
    return cost


def _costed(*batchers: InlineBatcher) -> None:
    for batcher in batchers:  # 10 ms + 5 ms a text, on the full session and on a lane
        batcher.cost = _line(0.010, 0.005)
        batcher.lane_cost = _line(0.010, 0.005)


def _queue(batcher: InlineBatcher, texts: int) -> None:
    loop = asyncio.new_event_loop()
    batcher._queue.append(_Pending(["q"] * texts, None, None, loop.create_future()))
    batcher._queued_texts += texts
    loop.close()


def _behind_a_lone_run(wide: bool) -> float:
    """What a request of one text to v2 expects to wait while v1's lone run of 32
    texts (170 ms), just started, goes on its full session (of several threads when
    `wide`), with 32 texts of v1 queued behind it (170 ms more, a lone run again)."""
    now = time.perf_counter()  # no thread starts, and the clock stands still
    with SharedThreads(2, clock=lambda: now) as threads:
        v1 = _batcher(FakeRuntime(busy_lanes=2), threads)
        v2 = _batcher(FakeRuntime(busy_lanes=2), threads)
        _costed(v1, v2)
        threads.hold(0, v1, 32, started=now, wide=wide)
        _queue(v1, 32)
        assert threads.free() == (0 if wide else 1)
        return v2.expected_wait_s(1)


def test_another_versions_full_session_run_counts_as_holding_every_lane() -> None:
    """On two threads, v2's request waits for v1's run as for two: (170 + 170 queued
    + 15 its own + 170 for the lane v1's run holds too + 10) ms over two lanes; a run
    on a one-thread full session holds one lane only: it starts on the other, 170 +
    15 ms at worst."""
    assert _behind_a_lone_run(wide=True) == pytest.approx((0.170 * 3 + 0.015 + 0.010) / 2)
    assert _behind_a_lone_run(wide=False) == pytest.approx(0.170 + 0.015)


def test_without_lanes_a_full_session_run_waits_for_every_thread() -> None:
    """v1 holds both threads, with 70 ms and 170 ms left: v0's request (no lanes, a
    full session of several threads) starts when both are done, not at the first."""
    now = time.perf_counter()
    with SharedThreads(2, clock=lambda: now) as threads:
        v1 = _batcher(FakeRuntime(busy_lanes=2), threads)
        v0 = _batcher(FakeRuntime(busy_lanes=0), threads)
        one_thread = _batcher(FakeRuntime(busy_lanes=0, intra_op_threads=1), threads)
        _costed(v1, v0, one_thread)
        threads.hold(1, v1, 32, busy=True, started=now - 0.1)
        threads.hold(2, v1, 32, busy=True, started=now)
        assert v0.expected_wait_s(1) == pytest.approx(0.170 + 0.015)
        # A full session of one thread starts on the first thread to free.
        assert one_thread.expected_wait_s(1) == pytest.approx(0.070 + 0.015)
