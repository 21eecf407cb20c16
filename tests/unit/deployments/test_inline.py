"""The inline batcher: dispatches at once when idle, gathers while busy, honours faults."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from configs.schema import FaultInjection
from deployments.inline import InlineBatcher
from deployments.model_server import InjectedFault
from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model


class _Metrics:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def observe_batch(self, inputs: int, seconds: float) -> None:
        self.batches.append(inputs)


@pytest.fixture(scope="module")
def runtime(manifest: dict[str, Any], example_store: Path, tmp_path_factory: Any) -> Any:
    entry = manifest["v2"]
    ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
    return load_model(ref, RuntimeOptions(), ArtifactStore(tmp_path_factory.mktemp("cache")))


def test_idle_dispatch_then_gathered_batches(runtime: Any) -> None:
    metrics = _Metrics()
    batcher = InlineBatcher(runtime, metrics, ThreadPoolExecutor(1))  # type: ignore[arg-type]
    batcher.max_batch_size = 4

    async def run() -> list[Any]:
        alone = await batcher.embed(["alone", "x"])  # idle: dispatched on its own
        together = await asyncio.gather(*(batcher.embed([f"t{i}", "x"]) for i in range(9)))
        return [alone, *together]

    results = asyncio.run(run())
    assert [r[0].shape for r in results] == [(2, 384)] * 10
    assert [r[1] > 0 for r in results] == [True] * 10
    assert metrics.batches[0] == 2
    # The nine arriving together are gathered, at most 4 requests (8 texts) per batch.
    assert sum(metrics.batches[1:]) == 18
    assert max(metrics.batches[1:]) == 8
    assert len(metrics.batches) == 1 + 3


def test_fault_injection_applies_inline(runtime: Any) -> None:
    batcher = InlineBatcher(
        runtime,
        _Metrics(),  # type: ignore[arg-type]
        ThreadPoolExecutor(1),
        FaultInjection(error_rate=1.0),
    )
    with pytest.raises(InjectedFault):
        asyncio.run(batcher.embed(["x"]))


def test_small_requests_tokenized_on_arrival_large_ones_in_the_batch(
    manifest: dict[str, Any], example_store: Path, tmp_path: Path
) -> None:
    import numpy as np

    from deployments.inline import LOOP_TOKENIZE_MAX_TEXTS

    # fp32 (v1): a text's vector does not depend on its batch-mates.
    entry = manifest["v1"]
    ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
    runtime: Any = load_model(ref, RuntimeOptions(), ArtifactStore(tmp_path))
    batcher = InlineBatcher(runtime, _Metrics(), ThreadPoolExecutor(1))  # type: ignore[arg-type]
    small = ["a red shoe", "blue socks"]
    large = [f"text number {i} about shoes" for i in range(LOOP_TOKENIZE_MAX_TEXTS + 1)]
    long_one = ["word " * 2000]  # one text over the character bound

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(batcher.embed(t) for t in (small, large, long_one))))

    results = asyncio.run(run())
    for texts, (vectors, tokens) in zip((small, large, long_one), results, strict=True):
        expected, per_text = runtime.embed_counted(texts)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        assert tokens == sum(per_text)
