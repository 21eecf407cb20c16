"""The batch cost model behind the inline queue's wait bound: t(n) = a + b * n."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from configs.schema import InlineBatchingConfig
from deployments.errors import Overloaded
from deployments.replicas.batch_cost import BatchCost
from deployments.replicas.inline import InlineBatcher
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
    cost.observe(1, 0.120)  # ten times as long as the line says
    assert cost.seconds(1, 64) == pytest.approx(0.012 * 10**0.3, rel=1e-6)  # about 2x


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
    with ThreadPoolExecutor(1) as executor:
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
