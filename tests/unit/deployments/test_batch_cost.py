"""The batch cost model behind the inline queue's wait bound: t(n) = a + b * n."""

from __future__ import annotations

import asyncio
import time

import pytest

from configs.schema import InlineBatchingConfig
from deployments.errors import Overloaded
from deployments.replicas.batch_cost import BatchCost
from deployments.replicas.inline import InlineBatcher, _Pending
from deployments.replicas.threads import SharedThreads
from tests.unit.deployments.fakes import BatchRecorder, FakeRuntime


def _line(a: float, b: float) -> BatchCost:
    cost = BatchCost()
    for n in (1, 8, 3, 16, 1, 32, 5):
        cost.observe(n, a + b * n)
    return cost


def test_nothing_measured_means_no_estimate() -> None:
    cost = BatchCost()
    assert cost.seconds(10, 64) is None
    cost.observe(0, 1.0)  # nonsense is ignored
    cost.observe(3, 0.0)
    assert cost.seconds(10, 64) is None


def test_a_line_is_fitted_from_batches_of_several_sizes() -> None:
    cost = _line(0.010, 0.002)
    assert cost.fixed_s == pytest.approx(0.010)
    assert cost.per_text_s == pytest.approx(0.002)
    assert cost.seconds(8, 64) == pytest.approx(0.010 + 8 * 0.002)
    # 100 texts with batches of at most 64: two batches, two fixed parts.
    assert cost.seconds(100, 64) == pytest.approx(2 * 0.010 + 100 * 0.002)
    assert cost.seconds(0, 64) == 0.0


def test_same_size_batches_keep_the_shape_and_move_the_level() -> None:
    # Calibrated at 10 ms + 2 ms/text, then a phase where single texts take 60 ms
    # (the machine is five times slower): the shape a/b = 5 is kept.
    cost = BatchCost()
    cost.observe(1, 0.012)
    cost.observe(8, 0.026)
    for _ in range(30):
        cost.observe(1, 0.060)
    b = 0.060 / (5 + 1)
    assert cost.per_text_s == pytest.approx(b, rel=1e-3)
    assert cost.fixed_s == pytest.approx(5 * b, rel=1e-3)
    # Six queued single texts run as one batch: 110 ms, not six times 60 ms.
    assert cost.seconds(6, 64) == pytest.approx(0.110, rel=1e-3)


def test_without_a_shape_the_cost_is_per_text() -> None:
    cost = BatchCost()
    for _ in range(5):
        cost.observe(1, 0.050)
    assert cost.fixed_s == 0.0
    assert cost.seconds(4, 64) == pytest.approx(0.200)


def test_one_stalled_batch_moves_the_level_little() -> None:
    cost = _line(0.010, 0.002)
    cost.observe(1, 0.120)  # ten times as long as the line says: taken as four times
    assert cost.seconds(1, 64) == pytest.approx(0.012 * 4**0.3, rel=1e-6)  # about 1.5x
    stalled = _line(0.010, 0.002)
    stalled.observe(1, 2.0)  # a 2 s pause: no worse than four times either
    assert stalled.seconds(1, 64) == pytest.approx(0.012 * 4**0.3, rel=1e-6)


def test_a_stalled_small_batch_beside_a_large_one_leaves_the_shape_sane() -> None:
    """A one-text batch stalled for half a second, then a 32-text batch of long texts
    (half a second of real work): as a pair they say "500 ms fixed, 0.6 ms a text",
    which made every request look like a second's wait and refused a burst at once.
    The shape moves by a bounded step."""
    cost = _line(0.001, 0.003)
    cost.observe(1, 0.500)
    cost.observe(32, 0.520)
    assert cost.fixed_s < 0.05
    assert cost.seconds(1, 64) < 0.05  # not about 0.5 s
    for _ in range(10):  # normal batches afterwards: back near the line
        cost.observe(1, 0.004)
    assert cost.seconds(1, 64) == pytest.approx(0.004, rel=0.5)


def test_a_slope_never_goes_negative() -> None:
    cost = BatchCost()
    for n, t in ((1, 0.05), (16, 0.04), (1, 0.05), (16, 0.04)):
        cost.observe(n, t)
    assert cost.per_text_s is not None
    assert cost.per_text_s > 0
    assert cost.seconds(32, 64) >= cost.seconds(16, 64)  # type: ignore[operator]


def test_calibration_times_one_text_and_several() -> None:
    runtime = FakeRuntime()
    cost = BatchCost()
    cost.calibrate(lambda n: runtime.embed_token_ids(runtime.tokenize(["x"] * n)))
    assert [len(run) for run in runtime.runs] == [1, 8]
    assert cost.per_text_s is not None
    assert cost.per_text_s > 0


def test_the_batcher_judges_the_wait_by_the_batch_cost() -> None:
    """One request runs, six single texts queue behind it. On a slow phase where a single
    text takes 60 ms, texts/s alone would predict 7 x 60 ms = 0.42 s; with the queue
    as one batch it is at most 60 ms (what is left of the one running) + 110 ms."""
    runtime = FakeRuntime()
    with SharedThreads(1) as executor:
        batcher = InlineBatcher(runtime, BatchRecorder(), executor)  # type: ignore[arg-type]
        batcher.configure(InlineBatchingConfig(max_queue_wait_s=0.3))
        batcher.cost.observe(1, 0.012)
        batcher.cost.observe(8, 0.026)
        for _ in range(30):
            batcher.cost.observe(1, 0.060)

        async def scenario() -> float:
            runtime.gate.clear()
            first = asyncio.create_task(batcher.embed(["first"]))
            await asyncio.sleep(0)
            queued = [asyncio.create_task(batcher.embed([f"t{i}"])) for i in range(5)]
            await asyncio.sleep(0)
            wait = batcher.expected_wait_s(1)
            sixth = asyncio.create_task(batcher.embed(["t5"]))  # admitted: 0.17 s < 0.3 s
            await asyncio.sleep(0)
            # A 300-text request would not fit the next batch (256 texts) and would
            # wait past 0.3 s: refused at once.
            with pytest.raises(Overloaded):
                await batcher.embed([f"big{i}" for i in range(300)])
            # One that joins the next batch, which itself takes no longer than the
            # bound, is admitted though what is left of the batch in flight puts the
            # whole wait over it (up to 0.06 s left + 0.12 s for the next batch > 0.13 s
            # while the first batch has run under 50 ms).
            batcher.configure(InlineBatchingConfig(max_queue_wait_s=0.13))
            assert batcher.expected_wait_s(1) > 0.13
            joins = asyncio.create_task(batcher.embed(["joins the next batch"]))
            await asyncio.sleep(0)
            assert batcher.queued_texts == 7
            # When the next batch alone would take longer, it is refused after all.
            batcher.configure(InlineBatchingConfig(max_queue_wait_s=0.1))
            with pytest.raises(Overloaded):
                await batcher.embed(["one more"])
            runtime.gate.set()
            await asyncio.gather(first, sixth, joins, *queued)
            return wait

        wait = asyncio.run(scenario())
        runtime.gate.set()
    assert 0.110 <= wait <= 0.060 + 0.110 + 1e-9


# ---- with busy lanes: the queue shared by the lanes as they free ---------------


def _lanes_batcher(
    lanes: int,
    in_flight: list[tuple[float, int]],
    queued: list[int],
    full: BatchCost | None = None,
    solo: bool = False,
) -> InlineBatcher:
    """A batcher with `lanes` busy lanes, batches of (seconds run so far, texts) in
    flight (on lanes, or one lone run on the full session when `solo`) and requests of
    `queued` texts waiting, on the line t(n) = 10 ms + 5 ms * n on a lane (32 texts:
    170 ms), and `full` (else the same line) on the full session."""
    # No thread starts: nothing runs. The clock stands still, so the batches have run
    # exactly `ran_s` however long the test takes to reach its assertions.
    now = time.perf_counter()
    threads = SharedThreads(2, clock=lambda: now)
    batcher = InlineBatcher(FakeRuntime(busy_lanes=lanes), BatchRecorder(), threads)  # type: ignore[arg-type]
    batcher.lane_cost = _line(0.010, 0.005)
    batcher.cost = full or _line(0.010, 0.005)
    for i, (ran_s, texts) in enumerate(in_flight):
        threads.hold(i, batcher, texts, busy=not solo, started=now - ran_s)
    loop = asyncio.new_event_loop()
    for i, texts in enumerate(queued):
        batcher._queue.append(_Pending([f"q{i}"] * texts, None, None, loop.create_future()))
        batcher._queued_texts += texts
    loop.close()
    return batcher


def test_a_freed_lane_leaves_its_share_to_the_lane_about_to_free() -> None:
    """4 callers of 32 texts on two lanes: a lane frees with two requests queued. When
    the other lane's batch is nearly done, taking one ends the queue at 180 ms (that
    lane takes the other in 10 ms); taking both, at 330 ms, a whole run later."""
    nearly_done = _lanes_batcher(2, [(0.160, 32)], [32, 32])
    assert nearly_done._lane_share(free=1) == 1
    # When the other lane has just started its batch, it frees no sooner than
    # this one runs both: one batch of two is as soon, and batches more.
    just_started = _lanes_batcher(2, [(0.0, 32)], [32, 32])
    assert just_started._lane_share(free=1) == 2
    # Both lanes free: an even share each, whatever the cost says.
    idle = _lanes_batcher(2, [], [32, 32, 32])
    assert idle._lane_share(free=2) == 2


def test_with_lanes_the_wait_counts_the_queue_shared_over_them() -> None:
    """Two batches of 32 texts just started, one request of 32 waiting, one more of 32
    arriving: one lane would take 170 ms + 330 ms for both (0.5 s, over a 0.4 s bound);
    two lanes take one each as they free, 340 ms."""
    one_lane = _lanes_batcher(1, [(0.0, 32)], [32])
    assert one_lane.expected_wait_s(32) == pytest.approx(0.500, abs=0.005)
    two_lanes = _lanes_batcher(2, [(0.0, 32), (0.0, 32)], [32])
    assert two_lanes.expected_wait_s(32) == pytest.approx(0.340, abs=0.005)
    # A flood is still refused: 40 requests of 32 texts queued is seconds of work
    # however the lanes share it.
    flood = _lanes_batcher(2, [(0.0, 32), (0.0, 32)], [32] * 40)
    assert flood.expected_wait_s(32) > 3.0


def test_a_batch_waiting_for_a_thread_another_version_holds_is_not_timed_as_its_cost() -> None:
    """Two versions share one inference thread. While the first holds it for 300 ms,
    the second's batch waits; its cost is what it ran, not that wait."""
    held, other = FakeRuntime(), FakeRuntime()
    with SharedThreads(1) as executor:
        first = InlineBatcher(held, BatchRecorder(), executor)  # type: ignore[arg-type]
        second = InlineBatcher(other, BatchRecorder(), executor)  # type: ignore[arg-type]

        async def scenario() -> None:
            held.gate.clear()
            blocking = asyncio.create_task(first.embed(["holds the thread"]))
            await asyncio.sleep(0)
            waiting = asyncio.create_task(second.embed(["waits for it"]))
            await asyncio.sleep(0.3)
            held.gate.set()
            await asyncio.gather(blocking, waiting)

        try:
            asyncio.run(scenario())
        finally:
            held.gate.set()
    assert first.cost.seconds(1, 64) >= 0.25  # type: ignore[operator]
    assert second.cost.seconds(1, 64) < 0.1  # type: ignore[operator]


def test_a_burst_is_judged_at_the_speed_of_the_lanes_that_run_it() -> None:
    """The full session runs a text twice as fast as a lane (as two threads against
    one). Two lane batches of 32 just started, one request of 32 queued, one more
    arriving: the lanes take 340 ms, though the lone requests before the burst ran
    at 2.5 ms a text, by which the wait would look half that."""
    fast = _line(0.005, 0.0025)
    burst = _lanes_batcher(2, [(0.0, 32), (0.0, 32)], [32], full=fast)
    assert burst.expected_wait_s(32) == pytest.approx(0.340, abs=0.005)
    # Behind a lone run of 32 texts on the full session (85 ms, holding both lanes):
    # the queue starts when it ends, shared by the lanes: 85 + 170 ms.
    behind = _lanes_batcher(2, [(0.0, 32)], [32], full=fast, solo=True)
    assert behind.expected_wait_s(32) == pytest.approx(0.255, abs=0.005)
    # What a lone request would cost next is the full session's, not a lane's.
    idle = _lanes_batcher(2, [], [], full=fast)
    assert idle.expected_wait_s(32) == pytest.approx(0.085, abs=0.001)


def test_lone_runs_and_lane_runs_are_costed_apart() -> None:
    """Calibration times both kinds of run; a lone request moves the full session's
    cost only, a burst's lane batches the lanes' only."""
    runtime = FakeRuntime(
        busy_lanes=2, run_seconds=lambda n, busy: (0.004 + 0.002 * n) * (2 if busy else 1)
    )
    with SharedThreads(2) as threads:
        batcher = InlineBatcher(runtime, BatchRecorder(), threads)  # type: ignore[arg-type]
        batcher.calibrate()
        assert runtime.busy_runs == [False, False, True, True]
        assert batcher.cost.per_text_s == pytest.approx(0.002, rel=0.3)
        assert batcher.lane_cost.per_text_s == pytest.approx(0.004, rel=0.3)
        lanes_before = batcher.lane_cost.per_text_s

        async def scenario() -> None:
            for i in range(5):
                await batcher.embed([f"lone {i}"])
            assert batcher.lane_cost.per_text_s == lanes_before
            runtime.gate.clear()
            first = asyncio.create_task(batcher.embed(["first"]))
            await asyncio.sleep(0.01)
            queued = [asyncio.create_task(batcher.embed([f"q{i}"] * 4)) for i in range(4)]
            await asyncio.sleep(0)
            full_before = batcher.cost.per_text_s
            runtime.gate.set()
            await asyncio.gather(first, *queued)
            assert runtime.busy_runs[-3:] == [False, True, True]
            assert batcher.lane_cost.per_text_s != lanes_before
            assert batcher.cost.per_text_s != full_before  # the lone "first"

        asyncio.run(scenario())


# ---- versions sharing the inference threads ---------------------------------------


def test_a_version_judges_its_wait_by_every_version_holding_the_threads() -> None:
    """v1 holds both threads with two batches of 32 just started and queues one more;
    a request of 32 to v2, whose own lanes are idle, waits for those threads as they
    free: (170 + 170 + 170 + 170 + 10) ms over two threads, not its own 170 ms."""
    v1 = _lanes_batcher(2, [(0.0, 32), (0.0, 32)], [32])
    v2 = InlineBatcher(FakeRuntime(busy_lanes=2), BatchRecorder(), v1._threads)  # type: ignore[arg-type]
    v2.cost = _line(0.010, 0.005)
    assert v2.expected_wait_s(32) == pytest.approx(0.345, abs=0.005)
    # v1's own wait counts what v2 has queued ahead of it the same way: the two held
    # batches, v2's 32 texts, its own 64 as one batch, over two threads.
    loop = asyncio.new_event_loop()
    v2._queue.append(_Pending(["v2"] * 32, None, None, loop.create_future()))
    v2._queued_texts += 32
    loop.close()
    assert v1.expected_wait_s(32) == pytest.approx(0.425, abs=0.005)


def test_a_thread_that_frees_goes_to_the_oldest_request_whichever_its_version() -> None:
    """Two versions, two lanes each, two threads, both held by v1's batches. A request
    to v2 arrives, then one to v1: neither starts (a batch handed to busy threads would
    wait with its requests fixed). The first thread to free goes to v2's request,
    queued first; the next to v1's."""
    r1, r2 = FakeRuntime(busy_lanes=2), FakeRuntime(busy_lanes=2)
    with SharedThreads(2) as threads:
        v1 = InlineBatcher(r1, BatchRecorder(), threads)  # type: ignore[arg-type]
        v2 = InlineBatcher(r2, BatchRecorder(), threads)  # type: ignore[arg-type]

        async def scenario() -> None:
            threads.hold(1, v1, 8)
            threads.hold(2, v1, 8)
            older = asyncio.create_task(v2.embed(["v2 first"]))
            await asyncio.sleep(0.01)
            newer = asyncio.create_task(v1.embed(["v1 after"]))
            await asyncio.sleep(0.05)
            assert not r1.runs
            assert not r2.runs
            threads.release(1)
            await older
            assert r2.runs == [["v2 first"]]
            assert not r1.runs
            threads.release(2)
            await newer
            assert r1.runs == [["v1 after"]]

        asyncio.run(scenario())
    assert threads.free() == 2
