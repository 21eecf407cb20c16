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
from deployments.errors import InferenceFailed, ServekitError
from deployments.observability.logs import get_logger
from deployments.replicas.backend import SHADOW_COPY

# Shadow copies in flight per ingress replica, and per shadow version; beyond either
# they are dropped, counted. Per version, so that copies never fill the queue that the
# version's own callers (it may be the canary too) wait in.
MAX_SHADOW_IN_FLIGHT = 32
MAX_SHADOW_IN_FLIGHT_PER_VERSION = 4
# Failed shadow copies are logged as one warning line at most this often, with a count
# (callers never see them; the metrics count every one).
FAILURE_LOG_EVERY_S = 60.0


class NoRoom(Exception):
    """Raised by a copy's `run` when the room it was sent for is gone by the time it
    runs (a recommendation worker that got busy or went away): the copy is dropped and
    counted as such, never run elsewhere."""


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

    def __init__(
        self,
        call: EmbedCall,
        metrics: ShadowMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._call = call  # (model, version, texts) -> (vectors, tokens)
        self._metrics = metrics
        self._clock = clock
        self._log = get_logger("shadow")
        self._failed: dict[tuple[str, str], int] = {}  # not yet logged, per (model, shadow)
        self._logged_at: dict[tuple[str, str], float] = {}
        self._rng = random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[tuple[str, str], int] = {}  # per (model, shadow)
        self.specs: dict[str, ShadowSpec] = {}
        # model -> "<primary>-><shadow>" -> figures: two models' versions may share names
        self.counts: dict[str, dict[str, dict[str, float]]] = {}

    def maybe_shadow(
        self,
        model: str,
        primary: str,
        texts: list[str],
        vectors: np.ndarray[Any, Any],
        spare: Callable[[str], bool] | None = None,
    ) -> None:
        """Send a sampled copy of a served request to the model's shadow version; the
        agreement is each text's cosine between the two versions' vectors. `spare`:
        whether the shadow version has room now (else the copy is dropped, counted)."""

        async def run(shadow: str) -> np.ndarray[Any, Any]:
            shadow_vectors, _ = await self._call(model, shadow, texts)
            return shadow_vectors

        def agreement(shadow_vectors: np.ndarray[Any, Any]) -> list[float]:
            cosines: list[float] = np.einsum("ij,ij->i", vectors, shadow_vectors).tolist()
            return cosines

        self.maybe_mirror(model, primary, run, agreement, spare=spare)

    def maybe_mirror(
        self,
        model: str,
        primary: str,
        run: Callable[[str], Awaitable[Any]],
        agreement: Callable[[Any], list[float]],
        ready: Callable[[str], bool] | None = None,
        spare: Callable[[str], bool] | None = None,
    ) -> None:
        """Mirror a sampled share of served requests to the model's shadow version:
        `run(shadow)` repeats the request with it, off the caller's path, and
        `agreement(its answer)` says how far it agrees with the primary's, per input (1:
        the same). `ready(shadow)`: whether the shadow can answer yet (else skipped);
        `spare(shadow)`: whether there is room nobody waits for to run the copy now (else
        it is dropped, counted; `run` may still raise `NoRoom`, counted the same way)."""
        spec = self.specs.get(model)
        if spec is None or spec.version == primary or self._rng.random() >= spec.fraction:
            return
        if ready is not None and not ready(spec.version):
            return
        counts = self.counts.setdefault(model, {}).setdefault(
            f"{primary}->{spec.version}",
            {"requests": 0, "errors": 0, "dropped": 0, "cosine_sum": 0.0, "texts": 0},
        )
        key = (model, spec.version)
        if (
            len(self._tasks) >= MAX_SHADOW_IN_FLIGHT
            or self._in_flight.get(key, 0) >= MAX_SHADOW_IN_FLIGHT_PER_VERSION
            or (spare is not None and not spare(spec.version))
        ):
            counts["dropped"] += 1
            self._metrics.shadow(model, primary, spec.version, "dropped")
            return
        task = asyncio.create_task(
            self._mirror(model, primary, spec.version, run, agreement, counts)
        )
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._landed(key))

    def _landed(self, key: tuple[str, str]) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    async def _mirror(
        self,
        model: str,
        primary: str,
        shadow: str,
        run: Callable[[str], Awaitable[Any]],
        agreement: Callable[[Any], list[float]],
        counts: dict[str, float],
    ) -> None:
        started = time.perf_counter()
        counts["requests"] += 1
        SHADOW_COPY.set(True)  # this task's own context: no traceback, never on the loop
        try:
            answer = await run(shadow)
        except NoRoom:
            counts["requests"] -= 1
            counts["dropped"] += 1
            self._metrics.shadow(model, primary, shadow, "dropped")
            return
        except ServekitError as e:
            counts["errors"] += 1
            self._metrics.shadow(model, primary, shadow, "error")
            self._note_failure(model, shadow, e)
            return
        seconds = time.perf_counter() - started
        try:
            agreed = agreement(answer)
        except ValueError as e:  # e.g. a shadow whose vectors have another dimension
            counts["errors"] += 1
            self._metrics.shadow(model, primary, shadow, "error")
            failure = InferenceFailed(f"{model}/{shadow}: its answers cannot be compared ({e})")
            self._note_failure(model, shadow, failure)
            return
        counts["cosine_sum"] += float(sum(agreed))
        counts["texts"] += len(agreed)
        self._metrics.shadow(model, primary, shadow, "ok", seconds, agreed)

    def state(self, model: str) -> dict[str, Any] | None:
        """The model's shadow spec and the copies' figures, for `/v1/models/{name}`."""
        spec = self.specs.get(model)
        if spec is None:
            return None
        pairs = {}
        for pair, counts in self.counts.get(model, {}).items():
            if pair.endswith(f"->{spec.version}"):
                texts = counts["texts"]
                pairs[pair] = {
                    "requests": counts["requests"],
                    "errors": counts["errors"],
                    "dropped": counts["dropped"],
                    "mean_cosine": round(counts["cosine_sum"] / texts, 6) if texts else None,
                }
        return {"version": spec.version, "fraction": spec.fraction, "pairs": pairs}

    def _note_failure(self, model: str, shadow: str, error: ServekitError) -> None:
        """One warning line for the first failure, then at most one a minute with how
        many failed since (callers are never affected)."""
        key = (model, shadow)
        self._failed[key] = self._failed.get(key, 0) + 1
        now = self._clock()
        last = self._logged_at.get(key)
        if last is not None and now - last < FAILURE_LOG_EVERY_S:
            return
        failed = self._failed.pop(key)
        self._logged_at[key] = now
        self._log.warning(
            "shadow copies failing (callers unaffected)",
            extra={
                "fields": {
                    "model": model,
                    "shadow": shadow,
                    "failed": failed,
                    "since_s": round(now - last) if last is not None else 0,
                    "error": error.message,
                }
            },
        )
