"""The inline batcher: dispatches at once when idle, gathers while busy, honours faults."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from configs.schema import FaultInjection
from deployments.replicas.inline import InlineBatcher
from deployments.replicas.loading import InjectedFault
from deployments.replicas.threads import SharedThreads
from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model
from tests.unit.deployments.fakes import BatchRecorder


@pytest.fixture(scope="module")
def runtime(manifest: dict[str, Any], example_store: Path, tmp_path_factory: Any) -> Any:
    entry = manifest["v2"]
    ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
    return load_model(ref, RuntimeOptions(), ArtifactStore(tmp_path_factory.mktemp("cache")))


def test_idle_dispatch_then_gathered_batches(runtime: Any) -> None:
    metrics = BatchRecorder()
    batcher = InlineBatcher(runtime, metrics, SharedThreads(1))  # type: ignore[arg-type]
    batcher.max_batch_size = 4

    async def run() -> list[Any]:
        alone = await batcher.embed(["alone", "x"])  # idle: dispatched on its own
        together = await asyncio.gather(*(batcher.embed([f"t{i}", "x"]) for i in range(9)))
        return [alone, *together]

    results = asyncio.run(run())
    assert [r[0].shape for r in results] == [(2, 384)] * 10
    assert [len(r[1]) == 2 and min(r[1]) > 0 for r in results] == [True] * 10
    assert metrics.batches[0] == 2
    # The nine arriving together are gathered, at most 4 requests (8 texts) per batch.
    assert sum(metrics.batches[1:]) == 18
    assert max(metrics.batches[1:]) == 8
    assert len(metrics.batches) == 1 + 3


def test_fault_injection_applies_inline(runtime: Any) -> None:
    batcher = InlineBatcher(
        runtime,
        BatchRecorder(),  # type: ignore[arg-type]
        SharedThreads(1),
        FaultInjection(error_rate=1.0),
    )
    with pytest.raises(InjectedFault):
        asyncio.run(batcher.embed(["x"]))


def test_small_requests_tokenized_on_arrival_large_ones_in_the_batch(
    manifest: dict[str, Any], example_store: Path, tmp_path: Path
) -> None:
    import numpy as np

    from deployments.replicas.inline import LOOP_TOKENIZE_MAX_TEXTS

    # fp32 (v1): a text's vector does not depend on its batch-mates.
    entry = manifest["v1"]
    ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
    runtime: Any = load_model(ref, RuntimeOptions(), ArtifactStore(tmp_path))
    batcher = InlineBatcher(runtime, BatchRecorder(), SharedThreads(1))  # type: ignore[arg-type]
    small = ["a red shoe", "blue socks"]
    large = [f"text number {i} about shoes" for i in range(LOOP_TOKENIZE_MAX_TEXTS + 1)]
    long_one = ["word " * 2000]  # one text over the character bound

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(batcher.embed(t) for t in (small, large, long_one))))

    results = asyncio.run(run())
    for texts, (vectors, tokens) in zip((small, large, long_one), results, strict=True):
        expected, per_text = runtime.embed_counted(texts)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        assert tokens == per_text  # each text's own count


class _LaneRecorder:
    """Wraps a runtime's `embed_token_ids`, recording each run's lane and overlap."""

    def __init__(self, runtime: Any, lanes: int) -> None:
        import threading

        self.runtime, self.lanes = runtime, lanes
        self.runs: list[tuple[bool, int]] = []  # (busy, runs in flight when it started)
        self._in_flight = 0
        self._guard = threading.Lock()
        self.options, self.device_name = runtime.options, runtime.device_name

    @property
    def busy_lanes(self) -> int:
        return self.lanes

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.runtime.tokenize(texts)  # type: ignore[no-any-return]

    def embed_token_ids(self, ids: list[list[int]], busy: bool = False) -> Any:
        import time

        with self._guard:
            self._in_flight += 1
            self.runs.append((busy, self._in_flight))
        try:
            time.sleep(0.02)  # long enough for the others to queue up
            return self.runtime.embed_token_ids(ids, busy=busy)
        finally:
            with self._guard:
                self._in_flight -= 1


def test_lone_request_gets_the_full_session_queued_ones_share_the_lanes(
    manifest: dict[str, Any], example_store: Path, tmp_path: Path
) -> None:
    import numpy as np

    entry = manifest["v1"]
    ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
    runtime: Any = load_model(ref, RuntimeOptions(busy_lanes=2), ArtifactStore(tmp_path))
    assert runtime.busy_lanes == 2
    recorder = _LaneRecorder(runtime, 2)
    batcher = InlineBatcher(recorder, BatchRecorder(), SharedThreads(2))  # type: ignore[arg-type]
    texts = [[f"query {i} about red shoes"] for i in range(7)]

    async def run() -> list[Any]:
        alone = await batcher.embed(["a lone query"])
        # A burst: the first finds the batcher idle and runs alone; the six queued
        # behind it are split over the two lanes once it returns.
        burst = await asyncio.gather(*(batcher.embed(t) for t in texts))
        return [alone, *burst]

    results = asyncio.run(run())
    assert recorder.runs[:2] == [(False, 1), (False, 1)]  # alone, nothing beside them
    busy = recorder.runs[2:]
    assert [is_busy for is_busy, _ in busy] == [True, True]  # 3 + 3 over two lanes
    assert max(overlap for _, overlap in busy) == 2  # at once, never beside a solo run
    for request, (vectors, _) in zip([["a lone query"], *texts], results, strict=True):
        np.testing.assert_allclose(vectors, runtime.embed(request), atol=1e-5)


def test_without_lanes_one_batch_at_a_time(runtime: Any) -> None:
    recorder = _LaneRecorder(runtime, 0)
    batcher = InlineBatcher(recorder, BatchRecorder(), SharedThreads(2))  # type: ignore[arg-type]

    async def run() -> None:
        await asyncio.gather(*(batcher.embed([f"t{i}"]) for i in range(6)))

    asyncio.run(run())
    assert {overlap for _, overlap in recorder.runs} == {1}
    assert not any(busy for busy, _ in recorder.runs)


def test_inference_threads_run_below_the_loop_priority() -> None:
    import os
    import sys
    import threading

    from deployments.replicas.threads import INFERENCE_NICE_STEP, inference_executor

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread priorities are Linux's")
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    executor = inference_executor(2)
    theirs = executor.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert theirs.result() == min(19, mine + INFERENCE_NICE_STEP)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # caller as is
    executor.shutdown()


class _ThreadRecorder:
    """Wraps a runtime's `embed_token_ids`, recording the thread each run ran on."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.threads: list[int] = []
        self.options, self.device_name = runtime.options, runtime.device_name

    @property
    def busy_lanes(self) -> int:
        return 0

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.runtime.tokenize(texts)  # type: ignore[no-any-return]

    def embed_token_ids(self, ids: list[list[int]], busy: bool = False) -> Any:
        import threading

        self.threads.append(threading.get_ident())
        return self.runtime.embed_token_ids(ids, busy=busy)


def test_one_request_at_a_time_runs_on_the_loop_concurrent_ones_in_threads(
    manifest: dict[str, Any], example_store: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    import threading

    import numpy as np

    from deployments.replicas import inline
    from deployments.replicas.inline import LOOP_TOKENIZE_MAX_TEXTS
    from deployments.replicas.traffic import Traffic

    # Runs of any measured length go on the loop; the bound is tested below.
    monkeypatch.setattr(inline, "LOOP_RUN_MAX_S", 60.0)

    entry = manifest["v1"]
    ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
    runtime: Any = load_model(ref, RuntimeOptions(), ArtifactStore(tmp_path))
    recorder = _ThreadRecorder(runtime)
    traffic = Traffic(quiet_s=60)
    metrics = BatchRecorder()
    batcher = InlineBatcher(recorder, metrics, SharedThreads(1), traffic=traffic)  # type: ignore[arg-type]
    batcher.calibrate()
    loop_thread = threading.get_ident()
    texts = ["a red running shoe", "blue socks"]
    expected, per_text = runtime.embed_counted(texts)

    async def call(batch: list[str], probe: bool = False) -> tuple[Any, int]:
        recorder.threads.clear()
        vectors, tokens = await batcher.embed(batch, probe=probe)
        if batch == texts:
            np.testing.assert_allclose(vectors, expected, atol=1e-5)
            assert tokens == per_text
        return vectors, recorder.threads[0]

    async def run() -> None:
        traffic.enter()  # one request in flight: this one
        _, ran_on = await call(texts)
        assert ran_on == loop_thread
        assert metrics.batches[-1] == 2  # measured and counted as any batch
        _, ran_on = await call(texts, probe=True)  # a probe must see a hung runtime
        assert ran_on != loop_thread
        large = [f"text {i}" for i in range(LOOP_TOKENIZE_MAX_TEXTS + 1)]
        _, ran_on = await call(large)  # tokenized in the thread, run there
        assert ran_on != loop_thread
        monkeypatch.setattr(inline, "LOOP_RUN_MAX_S", 0.0)  # longer than the bound
        _, ran_on = await call(texts)
        assert ran_on != loop_thread
        monkeypatch.setattr(inline, "LOOP_RUN_MAX_S", 60.0)
        _, ran_on = await call(texts)
        assert ran_on == loop_thread
        traffic.enter()  # a second caller: from now on, threads
        traffic.leave()
        _, ran_on = await call(texts)
        assert ran_on != loop_thread
        traffic.leave()

    asyncio.run(run())
    batcher_without = InlineBatcher(recorder, BatchRecorder(), SharedThreads(1))  # type: ignore[arg-type]
    batcher_without.calibrate()
    recorder.threads.clear()
    asyncio.run(batcher_without.embed(texts))  # no traffic given (a dedicated replica)
    assert recorder.threads[0] != loop_thread


def test_the_threads_are_idle_only_with_nothing_running_or_waiting(runtime: Any) -> None:
    """What a shadow copy asks before it runs inline (`InlineBackend.spare`)."""
    recorder = _LaneRecorder(runtime, 0)  # each run takes 20 ms
    threads = SharedThreads(1)
    batcher = InlineBatcher(recorder, BatchRecorder(), threads)  # type: ignore[arg-type]
    seen: list[bool] = []

    async def run() -> None:
        seen.append(batcher.threads_idle())
        first = asyncio.ensure_future(batcher.embed(["one"]))
        second = asyncio.ensure_future(batcher.embed(["two"]))
        await asyncio.sleep(0.005)
        seen.append(batcher.threads_idle())  # one runs, one waits
        await asyncio.gather(first, second)
        seen.append(batcher.threads_idle())

    asyncio.run(run())
    assert seen == [True, False, True]


def test_a_shadow_copy_never_runs_on_the_event_loop(
    manifest: dict[str, Any], example_store: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """A replica serving one caller at a time runs that caller's small request on the
    loop, but a shadow copy of it (no HTTP request of its own, so the replica still
    counts one caller) goes to an inference thread: on the loop it would hold the
    caller's answer and the next request's parsing for the length of a run."""
    import threading

    import numpy as np

    from configs.schema import ShadowSpec
    from deployments.replicas import inline
    from deployments.replicas.traffic import Traffic
    from deployments.routing.shadow import Shadower

    monkeypatch.setattr(inline, "LOOP_RUN_MAX_S", 60.0)
    entry = manifest["v2"]
    ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
    runtime: Any = load_model(ref, RuntimeOptions(), ArtifactStore(tmp_path))
    recorder = _ThreadRecorder(runtime)
    traffic = Traffic(quiet_s=60)
    batcher = InlineBatcher(recorder, BatchRecorder(), SharedThreads(1), traffic=traffic)  # type: ignore[arg-type]
    batcher.calibrate()

    class Metrics:
        def shadow(self, *_: Any, **__: Any) -> None:
            pass

    async def call(model: str, version: str, texts: list[str]) -> Any:
        return await batcher.embed(texts)

    shadower = Shadower(call, Metrics())  # type: ignore[arg-type]
    shadower.specs = {"minilm": ShadowSpec(version="v2", fraction=1.0)}

    async def run() -> None:
        loop_thread = threading.get_ident()
        traffic.enter()  # the caller's request, in flight
        recorder.threads.clear()  # the calibration's runs
        await call("minilm", "v2", ["a red running shoe"])
        assert recorder.threads == [loop_thread]  # the caller's own: on the loop
        recorder.threads.clear()
        primary = np.ones((1, 384), dtype=np.float32)
        shadower.maybe_shadow("minilm", "v1", ["a red running shoe"], primary, spare=lambda v: True)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if recorder.threads:
                break
        assert recorder.threads
        assert recorder.threads[0] != loop_thread
        traffic.leave()

    asyncio.run(run())
