"""Failed shadow copies: callers never see them, the console gets one line a minute."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from configs.schema import ShadowSpec
from deployments.errors import InferenceFailed
from deployments.replicas.backend import SHADOW_COPY
from deployments.routing.shadow import FAILURE_LOG_EVERY_S, Shadower
from tests.unit.deployments.fakes import RecordedLogs


class _Metrics:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def shadow(self, model: str, primary: str, shadow: str, outcome: str, *_: Any) -> None:
        self.outcomes.append(outcome)


def test_failures_are_counted_and_summarised_without_tracebacks() -> None:
    quiet_seen: list[bool] = []

    async def failing(model: str, version: str, texts: list[str]) -> Any:
        quiet_seen.append(SHADOW_COPY.get())  # what a backend would read
        raise InferenceFailed(f"{model}/{version}: the model failed on this request")

    now = [1000.0]
    metrics = _Metrics()
    shadower = Shadower(failing, metrics, clock=lambda: now[0])
    shadower.specs = {"minilm": ShadowSpec(version="v2", fraction=1.0)}
    records = RecordedLogs()
    logger = logging.getLogger("servekit.shadow")
    logger.addHandler(records)
    try:

        async def burst(n: int) -> None:
            for _ in range(n):
                shadower.maybe_shadow("minilm", "v1", ["a"], np.ones((1, 4), np.float32))
                await asyncio.sleep(0.001)  # each copy lands before the next (cap per version)
            await asyncio.sleep(0.01)

        asyncio.run(burst(5))
        now[0] += FAILURE_LOG_EVERY_S / 2
        asyncio.run(burst(3))
        now[0] += FAILURE_LOG_EVERY_S / 2
        asyncio.run(burst(1))
    finally:
        logger.removeHandler(records)
    assert quiet_seen == [True] * 9
    assert not SHADOW_COPY.get()  # the caller's own context is untouched
    assert metrics.outcomes == ["error"] * 9
    lines = [r for r in records.records if r.getMessage().startswith("shadow copies failing")]
    assert [r.levelno for r in lines] == [logging.WARNING] * 2
    assert [r.fields["failed"] for r in lines] == [1, 8]  # type: ignore[attr-defined]
    assert all(r.exc_info is None for r in lines)
    assert shadower.counts["minilm"]["v1->v2"]["errors"] == 9


def _shadower(call: Any, metrics: _Metrics) -> Shadower:
    shadower = Shadower(call, metrics)
    shadower.specs = {"minilm": ShadowSpec(version="v2", fraction=1.0)}
    return shadower


def test_a_copy_is_dropped_when_the_shadow_version_has_no_room() -> None:
    """Inline, room means idle inference threads: a copy never queues in front of, or
    beside, a caller's request (the shadow may be the canary, judged by its callers)."""
    calls: list[list[str]] = []

    async def call(model: str, version: str, texts: list[str]) -> Any:
        calls.append(texts)
        return np.ones((len(texts), 4), np.float32), [1] * len(texts)

    metrics = _Metrics()
    shadower = _shadower(call, metrics)
    room = {"v2": False}

    async def body() -> None:
        vectors = np.ones((1, 4), np.float32)
        shadower.maybe_shadow("minilm", "v1", ["a"], vectors, spare=room.__getitem__)
        room["v2"] = True
        shadower.maybe_shadow("minilm", "v1", ["b"], vectors, spare=room.__getitem__)
        await asyncio.sleep(0.01)

    asyncio.run(body())
    assert calls == [["b"]]
    assert metrics.outcomes == ["dropped", "ok"]
    assert shadower.counts["minilm"]["v1->v2"]["dropped"] == 1


def test_copies_in_flight_are_capped_per_shadow_version() -> None:
    from deployments.routing.shadow import MAX_SHADOW_IN_FLIGHT_PER_VERSION

    started: list[str] = []

    async def body() -> None:
        release = asyncio.Event()

        async def slow(model: str, version: str, texts: list[str]) -> Any:
            started.append(texts[0])
            await release.wait()
            return np.ones((1, 4), np.float32), [1]

        metrics = _Metrics()
        shadower = _shadower(slow, metrics)
        for i in range(10):
            shadower.maybe_shadow("minilm", "v1", [str(i)], np.ones((1, 4), np.float32))
        await asyncio.sleep(0.01)
        assert len(started) == MAX_SHADOW_IN_FLIGHT_PER_VERSION
        release.set()
        await asyncio.sleep(0.01)
        # Landed copies make room again.
        shadower.maybe_shadow("minilm", "v1", ["late"], np.ones((1, 4), np.float32))
        await asyncio.sleep(0.01)
        assert started[-1] == "late"
        assert metrics.outcomes.count("dropped") == 10 - MAX_SHADOW_IN_FLIGHT_PER_VERSION

    asyncio.run(body())


def test_a_shadow_answering_another_dimension_is_an_error_not_a_crash() -> None:
    async def wider(model: str, version: str, texts: list[str]) -> Any:
        return np.ones((len(texts), 8), np.float32), [1] * len(texts)

    metrics = _Metrics()
    shadower = _shadower(wider, metrics)
    records = RecordedLogs()
    logger = logging.getLogger("servekit.shadow")
    logger.addHandler(records)
    try:

        async def body() -> None:
            shadower.maybe_shadow("minilm", "v1", ["a"], np.ones((1, 4), np.float32))
            await asyncio.sleep(0.01)

        asyncio.run(body())
    finally:
        logger.removeHandler(records)
    assert metrics.outcomes == ["error"]
    assert shadower.counts["minilm"]["v1->v2"]["errors"] == 1
    (line,) = [r for r in records.records if r.getMessage().startswith("shadow copies failing")]
    assert "cannot be compared" in line.fields["error"]  # type: ignore[attr-defined]


def test_copies_are_counted_per_model() -> None:
    """Two models whose versions share names (minilm v1->v2, a recommender v1->v2): each
    model's card shows its own copies alone."""

    async def same(model: str, version: str, texts: list[str]) -> Any:
        return np.ones((len(texts), 4), np.float32) / 2, [1] * len(texts)

    metrics = _Metrics()
    shadower = Shadower(same, metrics)
    shadower.specs = {
        "minilm": ShadowSpec(version="v2", fraction=1.0),
        "recommender": ShadowSpec(version="v2", fraction=1.0),
    }

    async def body() -> None:
        async def run(shadow: str) -> list[str]:
            return ["a"]

        def agreement(answer: list[str]) -> list[float]:
            return [0.5]

        shadower.maybe_shadow("minilm", "v1", ["x"], np.ones((1, 4), np.float32) / 2)
        for _ in range(3):
            shadower.maybe_mirror("recommender", "v1", run, agreement)
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)

    asyncio.run(body())
    minilm, recommender = shadower.state("minilm"), shadower.state("recommender")
    assert minilm is not None
    assert recommender is not None
    assert minilm["pairs"] == {
        "v1->v2": {"requests": 1, "errors": 0, "dropped": 0, "mean_cosine": 1.0}
    }
    assert recommender["pairs"] == {
        "v1->v2": {"requests": 3, "errors": 0, "dropped": 0, "mean_cosine": 0.5}
    }
    assert shadower.state("other") is None


def test_a_copy_whose_room_is_gone_when_it_runs_is_dropped() -> None:
    from deployments.routing.shadow import NoRoom

    metrics = _Metrics()
    shadower = _shadower(None, metrics)

    async def body() -> None:
        async def run(shadow: str) -> Any:
            raise NoRoom

        shadower.maybe_mirror("minilm", "v1", run, lambda answer: [1.0], spare=lambda v: True)
        await asyncio.sleep(0.01)

    asyncio.run(body())
    assert metrics.outcomes == ["dropped"]
    counts = shadower.counts["minilm"]["v1->v2"]
    assert (counts["requests"], counts["dropped"], counts["errors"]) == (0, 1, 0)
