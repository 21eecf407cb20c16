"""A dedicated version's replica batches as an inline version does, with its live settings;
`batch_wait_timeout_s` lets an idle replica hold a batch back for others to join."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from configs.schema import BatchLiveConfig
from deployments.errors import Timeout
from deployments.replicas.inline import InlineBatcher
from deployments.replicas.model_server import ModelServer
from deployments.replicas.threads import SharedThreads
from tests.unit.deployments.fakes import BatchRecorder, FakeRuntime
from tests.unit.stores.fake_clock import FakeClock


def _batcher(wait_s: float, max_batch_size: int = 16) -> tuple[InlineBatcher, BatchRecorder]:
    metrics = BatchRecorder()
    batcher = InlineBatcher(FakeRuntime(), metrics, SharedThreads(1))  # type: ignore[arg-type]
    batcher.configure(BatchLiveConfig(max_batch_size=max_batch_size), wait_s)
    return batcher, metrics


def test_without_a_wait_an_idle_batcher_runs_the_first_request_alone() -> None:
    batcher, metrics = _batcher(0.0)

    async def run() -> None:
        await asyncio.gather(*(batcher.embed([f"t{i}"]) for i in range(3)))

    asyncio.run(run())
    assert metrics.batches == [1, 2]


def test_a_wait_lets_requests_join_and_a_full_batch_goes_at_once() -> None:
    # A wait far longer than any test: only a full batch can end it.
    batcher, metrics = _batcher(3600.0, max_batch_size=3)

    async def run() -> None:
        await asyncio.gather(*(batcher.embed([f"t{i}"]) for i in range(3)))

    asyncio.run(run())
    assert metrics.batches == [3]


def test_a_lone_request_runs_when_the_wait_ends() -> None:
    batcher, metrics = _batcher(0.01)
    vectors, tokens = asyncio.run(batcher.embed(["alone"]))
    assert vectors.shape == (1, 4)
    assert tokens == [5]
    assert metrics.batches == [1]


@pytest.fixture(scope="module")
def server(manifest: dict[str, Any], example_store: Path, tmp_path_factory: Any) -> ModelServer:
    entry = manifest["v2"]
    spec = {
        "artifact": {"uri": str(example_store / entry["file"]), "sha256": entry["sha256"]},
        "runtime": "onnx",
        "device": "cpu",
    }
    return ModelServer("minilm", "v2", spec, cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_the_replica_applies_live_settings(server: ModelServer) -> None:
    server.reconfigure({"max_batch_size": 7, "batch_wait_timeout_s": 0.01})
    assert server.batch_settings() == {
        "max_batch_size": 7,
        "max_batch_texts": 256,
        "batch_wait_timeout_s": 0.01,
        "max_queued_texts": 1_000_000,
        "max_queue_wait_s": 600,
    }
    server.reconfigure({})
    assert server.batch_settings()["batch_wait_timeout_s"] == 0.0


def test_the_replica_answers_each_request_its_own_vectors(server: ModelServer) -> None:
    requests = [["a red shoe"], ["blue socks", "a green hat"], ["tea"]]

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(server.embed(texts, 30.0) for texts in requests)))

    for texts, (vectors, tokens) in zip(requests, asyncio.run(run()), strict=True):
        expected, per_text = server.runtime.embed_counted(texts)
        assert vectors.shape == (len(texts), 384)
        np.testing.assert_allclose(vectors, expected, atol=0.05)  # int8: batch-mates matter
        assert tokens == per_text


def test_work_whose_deadline_has_passed_is_dropped_unrun(server: ModelServer) -> None:
    with pytest.raises(Timeout):
        asyncio.run(server.embed(["too late"], 0.0))


def test_a_dedicated_replica_runs_queued_batches_on_its_busy_lanes(
    manifest: dict[str, Any], example_store: Path, tmp_path: Path
) -> None:
    """`busy_lanes: 2` on a dedicated version: a one-thread session beside the full one,
    two inference threads, and a burst answered as two batches at once, each request
    its own vectors."""
    entry = manifest["v1"]
    spec = {
        "artifact": {"uri": str(example_store / entry["file"]), "sha256": entry["sha256"]},
        "runtime": "onnx",
        "device": "cpu",
        "intra_op_threads": 2,
        "busy_lanes": 2,
    }
    server = ModelServer("minilm", "v1", spec, cache_dir=str(tmp_path))
    assert server.runtime.busy_lanes == 2
    assert server.batcher._threads.workers == 2
    recorder = BatchRecorder()
    server.batcher._metrics = recorder
    requests = [[f"query {i} about trail shoes"] for i in range(9)]

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(server.embed(texts, 30.0) for texts in requests)))

    answers = asyncio.run(run())
    assert recorder.batches[0] == 1  # the first alone, the eight queued behind it shared
    assert recorder.batches[1:] == [4, 4]
    for texts, (vectors, _) in zip(requests, answers, strict=True):
        np.testing.assert_allclose(vectors, server.runtime.embed(texts), atol=1e-5)


def test_one_caller_at_a_time_runs_on_the_loop_several_in_threads(
    server: ModelServer, monkeypatch: Any
) -> None:
    """The caller names itself while it serves one request at a time: its lone requests
    run on the replica's event loop; another caller, or a call that names none, sends
    the replica back to its threads for the quiet time."""
    import threading

    from deployments.replicas import inline
    from deployments.replicas.traffic import Traffic

    monkeypatch.setattr(inline, "LOOP_RUN_MAX_S", 60.0)  # any measured run goes
    clock = FakeClock()
    traffic = Traffic(quiet_s=0.5, clock=clock)
    monkeypatch.setattr(server, "traffic", traffic)
    monkeypatch.setattr(server.batcher, "_traffic", traffic)
    ran_on: list[int] = []
    real = server.runtime.embed_token_ids

    def recorded(ids: Any, busy: bool = False) -> Any:
        ran_on.append(threading.get_ident())
        return real(ids, busy=busy)

    monkeypatch.setattr(server.runtime, "embed_token_ids", recorded)

    async def call(caller: str | None) -> bool:
        ran_on.clear()
        vectors, _ = await server.embed(["a red shoe"], 30.0, caller)
        assert vectors.shape == (1, 384)
        await clock.advance(0.01)
        return ran_on[0] == threading.get_ident()

    async def run() -> list[bool]:
        here = [await call("ingress-a"), await call("ingress-a")]
        here += [await call("ingress-b"), await call("ingress-a")]  # two callers
        await clock.advance(1.0)
        here.append(await call("ingress-a"))
        here.append(await call(None))  # a caller serving several at once
        await clock.advance(1.0)
        with pytest.raises(Timeout):  # a passed deadline is dropped, not run
            await server.embed(["too late"], 0.0, "ingress-a")
        return here

    assert asyncio.run(run()) == [True, True, False, False, True, False]
    assert traffic.in_flight == 0


def test_the_collector_finds_nothing_to_await_in_a_replica_without_direct_calls(
    manifest: dict[str, Any], example_store: Path, tmp_path: Path
) -> None:
    # Serve awaits what `__del__` returns at a replica's shutdown; the garbage
    # collector calls it too, and a coroutine made then would never be awaited.
    entry = manifest["v2"]
    spec = {
        "artifact": {"uri": str(example_store / entry["file"]), "sha256": entry["sha256"]},
        "runtime": "onnx",
    }
    server = ModelServer("minilm", "v2", spec, cache_dir=str(tmp_path), direct_calls=True)
    assert server.direct is None  # outside a Serve replica
    assert server.__del__() is None
    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        del server
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
