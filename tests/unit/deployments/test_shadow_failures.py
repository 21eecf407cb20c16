"""Failed shadow copies: callers never see them, the console gets one line a minute."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from configs.schema import ShadowSpec
from deployments.errors import InferenceFailed
from deployments.replicas.backend import QUIET_FAILURES
from deployments.routing.shadow import FAILURE_LOG_EVERY_S, Shadower


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Metrics:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def shadow(self, model: str, primary: str, shadow: str, outcome: str, *_: Any) -> None:
        self.outcomes.append(outcome)


def test_failures_are_counted_and_summarised_without_tracebacks() -> None:
    quiet_seen: list[bool] = []

    async def failing(model: str, version: str, texts: list[str]) -> Any:
        quiet_seen.append(QUIET_FAILURES.get())  # what a backend would read
        raise InferenceFailed(f"{model}/{version}: the model failed on this request")

    now = [1000.0]
    metrics = _Metrics()
    shadower = Shadower(failing, metrics, clock=lambda: now[0])
    shadower.specs = {"minilm": ShadowSpec(version="v2", fraction=1.0)}
    records = _Records()
    logger = logging.getLogger("servekit.shadow")
    logger.addHandler(records)
    try:

        async def burst(n: int) -> None:
            for _ in range(n):
                shadower.maybe_shadow("minilm", "v1", ["a"], np.ones((1, 4), np.float32))
            await asyncio.sleep(0.01)

        asyncio.run(burst(5))
        now[0] += FAILURE_LOG_EVERY_S / 2
        asyncio.run(burst(3))
        now[0] += FAILURE_LOG_EVERY_S / 2
        asyncio.run(burst(1))
    finally:
        logger.removeHandler(records)
    assert quiet_seen == [True] * 9
    assert not QUIET_FAILURES.get()  # the caller's own context is untouched
    assert metrics.outcomes == ["error"] * 9
    lines = [r for r in records.records if r.getMessage().startswith("shadow copies failing")]
    assert [r.levelno for r in lines] == [logging.WARNING] * 2
    assert [r.fields["failed"] for r in lines] == [1, 8]  # type: ignore[attr-defined]
    assert all(r.exc_info is None for r in lines)
    assert shadower.counts["v1->v2"]["errors"] == 9
