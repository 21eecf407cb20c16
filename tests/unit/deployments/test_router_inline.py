"""An inline version's call: bounded by `request_timeout_s`, answered with a 504."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import yaml

from configs.schema import AppArgs
from deployments.errors import Timeout
from deployments.replicas.inline_backend import InlineBackend
from deployments.routing.router import VersionRouter
from tests.conftest import REPO_ROOT
from tests.unit.deployments.fakes import QuietRouterMetrics


class _SlowBatcher:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cancelled = False

    def watch(self, watcher: Any) -> None:
        pass

    async def embed(self, texts: list[str], deadline: float | None = None) -> Any:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return [[0.0]] * len(texts), [1] * len(texts)


def _router(timeout_s: float, batcher: _SlowBatcher) -> tuple[VersionRouter, float]:
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["request_timeout_s"] = timeout_s
    config = AppArgs.model_validate(args)
    backends: dict[tuple[str, str], Any] = {
        ("minilm", v): InlineBackend(f"minilm/{v}", batcher, config)  # type: ignore[arg-type]
        for v in ("v1", "v2")
    }
    return VersionRouter(config, backends, QuietRouterMetrics()), time.monotonic() + timeout_s


def test_an_inline_call_past_the_timeout_is_a_504_and_is_cancelled() -> None:
    batcher = _SlowBatcher(5.0)
    router, deadline = _router(0.05, batcher)
    with pytest.raises(Timeout, match=r"minilm/v1: no answer within 0.05 s") as caught:
        asyncio.run(router.embed("minilm", "v1", ["a red shoe"], deadline))
    assert caught.value.status == 504
    assert batcher.cancelled


def test_an_inline_call_within_the_timeout_answers() -> None:
    router, deadline = _router(1.0, _SlowBatcher(0.0))
    vectors, tokens = asyncio.run(router.embed("minilm", "v1", ["a", "b"], deadline))
    assert (len(vectors), tokens) == (2, [1, 1])
