"""The router's inline call: bounded by `request_timeout_s`, answered with a 504."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml

from configs.schema import AppArgs
from deployments.errors import Timeout
from deployments.router import VersionRouter
from tests.conftest import REPO_ROOT


class _SlowBatcher:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cancelled = False

    async def embed(self, texts: list[str]) -> Any:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return [[0.0]] * len(texts), len(texts)


def _router(timeout_s: float, batcher: _SlowBatcher) -> VersionRouter:
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["request_timeout_s"] = timeout_s
    return VersionRouter(AppArgs.model_validate(args), {}, {("minilm", "v1"): batcher})  # type: ignore[dict-item]


def test_an_inline_call_past_the_timeout_is_a_504_and_is_cancelled() -> None:
    batcher = _SlowBatcher(5.0)
    router = _router(0.05, batcher)
    with pytest.raises(Timeout, match=r"minilm/v1: no answer within 0.05 s") as caught:
        asyncio.run(router.embed("minilm", "v1", ["a red shoe"]))
    assert caught.value.status == 504
    assert batcher.cancelled


def test_an_inline_call_within_the_timeout_answers() -> None:
    router = _router(1.0, _SlowBatcher(0.0))
    vectors, tokens = asyncio.run(router.embed("minilm", "v1", ["a", "b"]))
    assert (len(vectors), tokens) == (2, 2)
