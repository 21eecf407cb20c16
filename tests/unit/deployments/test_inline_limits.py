"""The inline batcher's bounds: a queue bounded in texts, batches bounded in requests and
texts, and queued work whose deadline passed or whose caller left dropped unrun."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import yaml

from configs.schema import AppArgs, InlineBatchingConfig
from deployments.errors import Overloaded, Timeout
from deployments.replicas.inline import InlineBatcher
from deployments.replicas.inline_backend import InlineBackend
from deployments.replicas.threads import SharedThreads
from tests.conftest import REPO_ROOT
from tests.unit.deployments.fakes import BatchRecorder, FakeRuntime


@pytest.fixture
def runtime() -> Iterator[FakeRuntime]:
    runtime = FakeRuntime(busy_lanes=1)
    yield runtime
    runtime.gate.set()  # no inference thread outlives the test


@pytest.fixture
def executor() -> Iterator[SharedThreads]:
    executor = SharedThreads(1)
    yield executor
    executor.shutdown()


def _batcher(
    runtime: FakeRuntime, executor: SharedThreads, **live: int
) -> tuple[InlineBatcher, BatchRecorder]:
    metrics = BatchRecorder()
    batcher = InlineBatcher(runtime, metrics, executor)  # type: ignore[arg-type]
    batcher.configure(InlineBatchingConfig(**live))
    return batcher, metrics


def _while_busy(
    runtime: FakeRuntime,
    batcher: InlineBatcher,
    then: Callable[[], Awaitable[Any]],
) -> Any:
    """Hold a first request inside the runtime and run `then` meanwhile; `then` opens
    the gate before it waits for answers (the gate opens at the end in any case)."""

    async def scenario() -> Any:
        runtime.gate.clear()
        first = asyncio.create_task(batcher.embed(["first"]))
        await asyncio.sleep(0)  # dispatched at once: the batcher was idle
        assert batcher.queued_texts == 0
        try:
            return await then()
        finally:
            runtime.gate.set()
            await first

    return asyncio.run(scenario())


def _texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# ---- the queue, bounded in texts -----------------------------------------------


def test_queue_is_bounded_in_texts(runtime: FakeRuntime, executor: SharedThreads) -> None:
    batcher, metrics = _batcher(runtime, executor, max_queued_texts=10)

    async def then() -> list[Any]:
        eight = asyncio.create_task(batcher.embed(_texts("a", 8)))
        two = asyncio.create_task(batcher.embed(_texts("b", 2)))
        await asyncio.sleep(0)
        assert batcher.queued_texts == 10  # exactly at the bound: admitted
        with pytest.raises(Overloaded) as caught:
            await batcher.embed(["one too many"])
        assert caught.value.status == 503
        assert caught.value.headers["Retry-After"] == "1"
        assert "10 texts already wait" in caught.value.message
        assert metrics.drops == ["queue_full"]
        assert batcher.queued_texts == 10
        runtime.gate.set()
        return list(await asyncio.gather(eight, two))

    (eight, two) = _while_busy(runtime, batcher, then)
    assert [len(eight[0]), len(two[0])] == [8, 2]
    assert not runtime.ran("one too many")


def test_refusals_are_logged_once_per_interval_with_their_count(
    runtime: FakeRuntime,
    executor: SharedThreads,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of 503s is one warning, naming the version, the reason and what the
    estimate was made of; the next line says how many were refused since."""
    batcher, _ = _batcher(runtime, executor, max_queued_texts=2)
    batcher.label = "minilm/v1"
    clock = [1000.0]
    monkeypatch.setattr("deployments.replicas.inline.time.monotonic", lambda: clock[0])

    async def then() -> None:
        waiting = asyncio.create_task(batcher.embed(_texts("a", 2)))
        await asyncio.sleep(0)
        for _ in range(3):
            with pytest.raises(Overloaded):
                await batcher.embed(["refused"])
        clock[0] += 10.0
        with pytest.raises(Overloaded):
            await batcher.embed(["refused"])
        runtime.gate.set()
        await waiting

    with caplog.at_level("WARNING", logger="servekit.batching"):
        _while_busy(runtime, batcher, then)
    lines = [r.getMessage() for r in caplog.records if r.name == "servekit.batching"]
    assert len(lines) == 2
    assert lines[0].startswith("request refused: 2 texts already wait for this version (1 ")
    assert "version=minilm/v1 queued=1 requests/2 texts" in lines[0]
    assert "batch cost: full session" in lines[0]
    assert "(3 refused since the last line)" in lines[1]


def test_the_end_of_a_burst_of_refusals_is_logged(
    runtime: FakeRuntime,
    executor: SharedThreads,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refusals held back after a line, with none after the interval to carry their
    count, get a line of their own when the interval ends."""
    monkeypatch.setattr("deployments.replicas.inline.REFUSAL_LOG_EVERY_S", 0.05)
    batcher, _ = _batcher(runtime, executor, max_queued_texts=2)
    batcher.label = "minilm/v1"

    async def then() -> None:
        waiting = asyncio.create_task(batcher.embed(_texts("a", 2)))
        await asyncio.sleep(0)
        for _ in range(3):
            with pytest.raises(Overloaded):
                await batcher.embed(["refused"])
        await asyncio.sleep(0.15)
        runtime.gate.set()
        await waiting

    with caplog.at_level("WARNING", logger="servekit.batching"):
        _while_busy(runtime, batcher, then)
    lines = [r.getMessage() for r in caplog.records if r.name == "servekit.batching"]
    assert len(lines) == 2
    assert (
        lines[1] == "2 more requests refused in the 0.05 s after the last line; version=minilm/v1"
    )


def test_an_empty_queue_admits_any_size(runtime: FakeRuntime, executor: SharedThreads) -> None:
    batcher, metrics = _batcher(runtime, executor, max_queued_texts=10)

    async def then() -> Any:
        big = asyncio.create_task(batcher.embed(_texts("big", 50)))
        await asyncio.sleep(0)
        assert batcher.queued_texts == 50  # waits, though alone over the bound
        with pytest.raises(Overloaded):
            await batcher.embed(["small"])
        runtime.gate.set()
        return await big

    vectors, tokens = _while_busy(runtime, batcher, then)
    assert vectors.shape == (50, 4)
    assert tokens == [len(t) for t in _texts("big", 50)]
    assert metrics.drops == ["queue_full"]
    # Idle again: the queue is empty, so a request of any size is dispatched.
    vectors, _ = asyncio.run(batcher.embed(_texts("idle", 50)))
    assert len(vectors) == 50


# ---- batches, bounded in requests and texts --------------------------------------


def _run_queued(
    runtime: FakeRuntime, batcher: InlineBatcher, requests: list[list[str]]
) -> list[Any]:
    async def then() -> list[Any]:
        tasks = [asyncio.create_task(batcher.embed(texts)) for texts in requests]
        await asyncio.sleep(0)
        assert batcher.queued_texts == sum(map(len, requests))
        runtime.gate.set()
        return list(await asyncio.gather(*tasks))

    results = _while_busy(runtime, batcher, then)
    for texts, (vectors, tokens) in zip(requests, results, strict=True):  # one answer each
        assert vectors[:, 0].tolist() == [len(t.encode()) for t in texts]
        assert tokens == [len(t.encode()) for t in texts]
    return results


def test_batches_are_bounded_in_requests(runtime: FakeRuntime, executor: SharedThreads) -> None:
    batcher, metrics = _batcher(runtime, executor, max_batch_size=3, max_batch_texts=100)
    _run_queued(runtime, batcher, [[f"r{i}"] for i in range(7)])
    assert [len(run) for run in runtime.runs] == [1, 3, 3, 1]
    assert metrics.batches == [1, 3, 3, 1]


def test_batches_are_bounded_in_texts(runtime: FakeRuntime, executor: SharedThreads) -> None:
    batcher, metrics = _batcher(runtime, executor, max_batch_size=100, max_batch_texts=5)
    _run_queued(runtime, batcher, [_texts(f"r{i}.", 2) for i in range(5)])
    assert [len(run) for run in runtime.runs] == [1, 4, 4, 2]
    assert metrics.batches == [1, 4, 4, 2]


def test_a_request_over_max_batch_texts_runs_alone(
    runtime: FakeRuntime, executor: SharedThreads
) -> None:
    batcher, _ = _batcher(runtime, executor, max_batch_size=100, max_batch_texts=5)
    _run_queued(runtime, batcher, [_texts("big", 8), ["x"], ["y"]])
    assert runtime.runs[1:] == [_texts("big", 8), ["x", "y"]]


# ---- work nobody waits for -------------------------------------------------------


def test_a_request_whose_deadline_passed_while_queued_is_dropped_unrun(
    runtime: FakeRuntime, executor: SharedThreads
) -> None:
    batcher, metrics = _batcher(runtime, executor)

    async def then() -> None:
        late = asyncio.create_task(batcher.embed(["late"], time.monotonic() + 0.05))
        kept = asyncio.create_task(batcher.embed(["kept"], time.monotonic() + 30))
        await asyncio.sleep(0.1)  # the first still runs; "late" expires in the queue
        runtime.gate.set()
        with pytest.raises(Timeout) as caught:
            await late
        assert caught.value.status == 504
        vectors, _ = await kept
        assert len(vectors) == 1

    _while_busy(runtime, batcher, then)
    assert runtime.runs == [["first"], ["kept"]]
    assert not runtime.ran("late")
    assert metrics.drops == ["expired"]
    assert batcher.queued_texts == 0


def test_through_the_backend_a_request_that_expires_queued_counts_as_expired(
    runtime: FakeRuntime, executor: SharedThreads
) -> None:
    """`InlineBackend` answers its caller at the deadline itself (a 504), which cancels
    the queued request's wait: the drop is still counted as `expired`, and a caller
    that goes away before its deadline as `cancelled`."""
    batcher, metrics = _batcher(runtime, executor)
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    backend = InlineBackend(
        "minilm/v1", batcher, AppArgs.model_validate(doc["applications"][0]["args"])
    )

    async def then() -> None:
        late = asyncio.create_task(backend.embed(["late"], time.monotonic() + 0.05))
        gone = asyncio.create_task(backend.embed(["gone"], time.monotonic() + 30))
        await asyncio.sleep(0)
        gone.cancel()  # the caller disconnects
        with pytest.raises(asyncio.CancelledError):
            await gone
        with pytest.raises(Timeout) as caught:
            await late  # the first still runs; "late" expires in the queue
        assert caught.value.status == 504
        assert batcher.queued_texts == 2  # taken out when a thread frees

    _while_busy(runtime, batcher, then)
    assert runtime.runs == [["first"]]
    assert metrics.drops == ["expired", "cancelled"]
    assert batcher.queued_texts == 0


def test_a_request_whose_caller_left_is_dropped_unrun(
    runtime: FakeRuntime, executor: SharedThreads
) -> None:
    batcher, metrics = _batcher(runtime, executor)

    async def then() -> None:
        gone = asyncio.create_task(batcher.embed(["gone", "too"]))
        kept = asyncio.create_task(batcher.embed(["kept"]))
        await asyncio.sleep(0)
        gone.cancel()  # as a caller's timeout or disconnect does
        with pytest.raises(asyncio.CancelledError):
            await gone
        runtime.gate.set()
        await kept

    _while_busy(runtime, batcher, then)
    assert runtime.runs == [["first"], ["kept"]]
    assert metrics.drops == ["cancelled"]
    assert batcher.queued_texts == 0


def test_texts_of_callers_who_left_do_not_fill_the_queue(
    runtime: FakeRuntime, executor: SharedThreads
) -> None:
    batcher, metrics = _batcher(runtime, executor, max_queued_texts=4)

    async def then() -> Any:
        gone = asyncio.create_task(batcher.embed(_texts("gone", 4)))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        # The queue is full only of texts nobody waits for: a new request is admitted.
        return await asyncio.gather(batcher.embed(_texts("new", 4)), _open(runtime))

    (vectors, _), _ = _while_busy(runtime, batcher, then)
    assert len(vectors) == 4
    assert metrics.drops == ["cancelled"]
    assert not runtime.ran("gone0")


async def _open(runtime: FakeRuntime) -> None:
    await asyncio.sleep(0.01)
    runtime.gate.set()
