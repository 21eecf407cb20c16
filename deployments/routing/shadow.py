"""Shadow copies: a sampled share of served requests mirrored to another version, off
the caller's path, with the divergence of its answers recorded."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from configs.schema import ShadowSpec
from deployments.errors import ServekitError

# Shadow copies in flight per ingress replica; beyond this they are dropped, counted.
MAX_SHADOW_IN_FLIGHT = 32

EmbedCall = Callable[[str, str, list[str]], Awaitable[tuple[np.ndarray[Any, Any], list[int]]]]


class ShadowMetrics(Protocol):
    """Where shadow outcomes are recorded."""

    def shadow(
        self,
        model: str,
        primary: str,
        shadow: str,
        outcome: str,
        seconds: float | None = None,
        cosines: list[float] | None = None,
    ) -> None:
        """One copy's outcome."""


class Shadower:
    """Mirrors requests as the live config's `shadow` section says."""

    def __init__(self, call: EmbedCall, metrics: ShadowMetrics) -> None:
        self._call = call  # (model, version, texts) -> (vectors, tokens)
        self._metrics = metrics
        self._rng = random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self.specs: dict[str, ShadowSpec] = {}
        self.counts: dict[str, dict[str, float]] = {}

    def maybe_shadow(
        self, model: str, primary: str, texts: list[str], vectors: np.ndarray[Any, Any]
    ) -> None:
        """Send a sampled copy of a served request to the model's shadow version."""
        spec = self.specs.get(model)
        if spec is None or spec.version == primary or self._rng.random() >= spec.fraction:
            return
        counts = self.counts.setdefault(
            f"{primary}->{spec.version}",
            {"requests": 0, "errors": 0, "dropped": 0, "cosine_sum": 0.0, "texts": 0},
        )
        if len(self._tasks) >= MAX_SHADOW_IN_FLIGHT:
            counts["dropped"] += 1
            self._metrics.shadow(model, primary, spec.version, "dropped")
            return
        task = asyncio.create_task(
            self._shadow(model, primary, spec.version, texts, vectors, counts)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(
        self,
        model: str,
        primary: str,
        shadow: str,
        texts: list[str],
        vectors: np.ndarray[Any, Any],
        counts: dict[str, float],
    ) -> None:
        started = time.perf_counter()
        counts["requests"] += 1
        try:
            shadow_vectors, _ = await self._call(model, shadow, texts)
        except ServekitError:
            counts["errors"] += 1
            self._metrics.shadow(model, primary, shadow, "error")
            return
        seconds = time.perf_counter() - started
        cosines = np.einsum("ij,ij->i", vectors, shadow_vectors)
        counts["cosine_sum"] += float(cosines.sum())
        counts["texts"] += len(cosines)
        self._metrics.shadow(model, primary, shadow, "ok", seconds, cosines.tolist())

    def state(self, model: str) -> dict[str, Any] | None:
        """The model's shadow spec and the copies' figures, for `/v1/models/{name}`."""
        spec = self.specs.get(model)
        if spec is None:
            return None
        pairs = {}
        for pair, counts in self.counts.items():
            if pair.endswith(f"->{spec.version}"):
                texts = counts["texts"]
                pairs[pair] = {
                    "requests": counts["requests"],
                    "errors": counts["errors"],
                    "dropped": counts["dropped"],
                    "mean_cosine": round(counts["cosine_sum"] / texts, 6) if texts else None,
                }
        return {"version": spec.version, "fraction": spec.fraction, "pairs": pairs}
