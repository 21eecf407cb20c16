"""Which version serves a request, and what happens around the call.

The ingress owns HTTP; this owns versions: the traffic split (random or sticky by
routing key), pinning, the call itself, canary watch with automatic rollback, shadow
copies, and the recent per-version figures `servekit status` shows.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import numpy as np
from ray.serve.handle import DeploymentHandle

from configs.schema import AppArgs, IngressLiveConfig, deployment_name
from deployments.calls import call_version
from deployments.errors import (
    InferenceFailed,
    NotFound,
    ServekitError,
    Timeout,
    Unavailable,
)
from deployments.inline import InlineBatcher
from deployments.logs import get_logger
from deployments.metrics import RouterMetrics
from deployments.model_server import EmbedResult
from deployments.rollout import CallWindow, CanaryMonitor
from deployments.traffic import TrafficSplitter, without_version

STATUS_WINDOW_S = 60.0
# Shadow copies in flight per ingress replica; beyond this they are dropped, counted.
MAX_SHADOW_IN_FLIGHT = 32


class VersionRouter:
    """Routes to model versions; one per ingress replica."""

    def __init__(
        self,
        args: AppArgs,
        handles: dict[tuple[str, str], DeploymentHandle[Any]],
        inline: dict[tuple[str, str], InlineBatcher] | None = None,
    ):
        self.args = args
        self.handles = handles
        self.inline = inline or {}
        self.live: IngressLiveConfig | None = None
        self.splitter: TrafficSplitter | None = None
        self.monitors: dict[str, CanaryMonitor] = {}
        self.rolled_back: dict[str, dict[str, Any]] = {}
        self.windows = {key: CallWindow(STATUS_WINDOW_S) for key in [*handles, *self.inline]}
        self.shadow_counts: dict[str, dict[str, float]] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self._metrics = RouterMetrics()
        self._log = get_logger("router")

    # ---- configuration ----------------------------------------------------------

    def configure(self, live: IngressLiveConfig) -> None:
        """Apply new live settings; a new config clears earlier automatic rollbacks."""
        problems = live.check_against(self.args)
        if problems:
            raise ValueError("; ".join(problems))
        self.live = live
        for (model, version), batcher in self.inline.items():
            batching = live.batching.get(deployment_name(model, version))
            if batching is not None:
                batcher.max_batch_size = batching.max_batch_size
        self.rolled_back = {}
        self.monitors = {model: CanaryMonitor(policy) for model, policy in live.rollout.items()}
        self._apply_weights()

    def _apply_weights(self) -> None:
        assert self.live is not None
        weights = {model: dict(w) for model, w in self.live.traffic.items()}
        for model, event in self.rolled_back.items():
            weights[model] = without_version(weights[model], event["version"])
        if self.splitter is None:
            self.splitter = TrafficSplitter(weights)
        else:
            self.splitter.update(weights)
        for model, by_version in weights.items():
            for version in self.args.models[model].versions:
                self._metrics.weight(model, version, by_version.get(version, 0))

    # ---- choosing ---------------------------------------------------------------

    def choose(self, model: str, pinned: str | None, source: str, key: str | None) -> str:
        """The version for a request: the pinned one, or the split's (sticky by key)."""
        spec = self.args.models.get(model)
        if spec is None:
            raise NotFound(f"model: not served here (served: {', '.join(self.args.models)})")
        if pinned is not None:
            if pinned not in spec.versions:
                known = ", ".join(spec.versions)
                raise NotFound(f"{source}: {model} has no such version (versions: {known})")
            return pinned
        if self.splitter is None:
            raise Unavailable("traffic weights are not configured yet")
        return self.splitter.pick(model, key)

    def weights(self, model: str) -> dict[str, int]:
        """Effective weights (after any automatic rollback)."""
        return self.splitter.weights(model) if self.splitter else {}

    # ---- calling ----------------------------------------------------------------

    async def embed(self, model: str, version: str, texts: list[str]) -> EmbedResult:
        """Call a version, recording the outcome for status and canary watch."""
        started = time.perf_counter()
        try:
            result = await self._call(model, version, texts, f"{model}/{version}")
        except ServekitError as e:
            self._record(model, version, e.status < 500, time.perf_counter() - started)
            raise
        self._record(model, version, True, time.perf_counter() - started)
        return result

    async def _call(self, model: str, version: str, texts: list[str], label: str) -> EmbedResult:
        batcher = self.inline.get((model, version))
        if batcher is None:
            result: EmbedResult = await call_version(
                self.handles[(model, version)],
                "embed",
                (texts,),
                self.args.request_timeout_s,
                label,
            )
            return result
        try:
            async with asyncio.timeout(self.args.request_timeout_s):  # no extra task
                return await batcher.embed(texts)
        except TimeoutError as e:
            raise Timeout(f"{label}: no answer within {self.args.request_timeout_s:g} s") from e
        except ServekitError:
            raise
        except Exception as e:
            self._log.error(
                "inline model call failed", exc_info=e, extra={"fields": {"target": label}}
            )
            raise InferenceFailed(f"{label}: the model failed on this request") from e

    def _record(self, model: str, version: str, ok: bool, seconds: float) -> None:
        self.windows[(model, version)].record(ok, seconds)
        monitor = self.monitors.get(model)
        if monitor is None or monitor.policy.canary != version or model in self.rolled_back:
            return
        monitor.record(ok, seconds)
        reason = monitor.breach()
        if reason is not None:
            self._roll_back(model, version, reason)

    def _roll_back(self, model: str, version: str, reason: str) -> None:
        self.rolled_back[model] = {"version": version, "reason": reason, "at": time.time()}
        self._apply_weights()
        self._metrics.rollback(model, version)
        self._log.warning(
            "canary rolled back",
            extra={"fields": {"model": model, "version": version, "reason": reason}},
        )

    # ---- shadow -----------------------------------------------------------------

    def maybe_shadow(
        self, model: str, primary: str, texts: list[str], vectors: np.ndarray[Any, Any]
    ) -> None:
        """Send a sampled copy of a served request to the model's shadow version."""
        spec = self.live.shadow.get(model) if self.live else None
        if spec is None or spec.version == primary or self._rng.random() >= spec.fraction:
            return
        counts = self.shadow_counts.setdefault(
            f"{primary}->{spec.version}",
            {"requests": 0, "errors": 0, "dropped": 0, "cosine_sum": 0.0, "texts": 0},
        )
        if len(self._shadow_tasks) >= MAX_SHADOW_IN_FLIGHT:
            counts["dropped"] += 1
            self._metrics.shadow(model, primary, spec.version, "dropped")
            return
        task = asyncio.create_task(
            self._shadow(model, primary, spec.version, texts, vectors, counts)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

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
            shadow_vectors, _ = await self._call(model, shadow, texts, f"{model}/{shadow} (shadow)")
        except ServekitError:
            counts["errors"] += 1
            self._metrics.shadow(model, primary, shadow, "error")
            return
        seconds = time.perf_counter() - started
        cosines = np.einsum("ij,ij->i", vectors, shadow_vectors)
        counts["cosine_sum"] += float(cosines.sum())
        counts["texts"] += len(cosines)
        self._metrics.shadow(model, primary, shadow, "ok", seconds, cosines.tolist())

    # ---- reporting --------------------------------------------------------------

    def card(self, model: str, created: int, detail: bool) -> dict[str, Any]:
        """The model as `/v1/models` shows it; with `detail`, recent figures too."""
        weights = self.weights(model)
        configured = self.live.traffic.get(model, {}) if self.live else {}
        versions = []
        for version, spec in self.args.models[model].versions.items():
            entry: dict[str, Any] = {
                "name": version,
                "weight": weights.get(version, 0),
                "configured_weight": configured.get(version, 0),
                "runtime": spec.runtime,
                "device": spec.device,
                "deployment": deployment_name(model, version)
                if (model, version) in self.handles
                else "Ingress (inline)",
                "sha256": spec.artifact.sha256,
            }
            if detail:
                entry["recent"] = self.windows[(model, version)].stats()
            versions.append(entry)
        card: dict[str, Any] = {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "servekit",
            "versions": versions,
        }
        if detail:
            card["rollout"] = self._rollout_state(model)
            card["shadow"] = self._shadow_state(model)
        return card

    def _rollout_state(self, model: str) -> dict[str, Any] | None:
        policy = self.live.rollout.get(model) if self.live else None
        if policy is None:
            return None
        event = self.rolled_back.get(model)
        return {
            "canary": policy.canary,
            "state": "rolled_back" if event else "watching",
            "reason": event["reason"] if event else None,
            "policy": policy.model_dump(),
            "window": self.monitors[model].window.stats(),
        }

    def _shadow_state(self, model: str) -> dict[str, Any] | None:
        spec = self.live.shadow.get(model) if self.live else None
        if spec is None:
            return None
        pairs = {}
        for pair, counts in self.shadow_counts.items():
            if pair.endswith(f"->{spec.version}"):
                texts = counts["texts"]
                pairs[pair] = {
                    "requests": counts["requests"],
                    "errors": counts["errors"],
                    "dropped": counts["dropped"],
                    "mean_cosine": round(counts["cosine_sum"] / texts, 6) if texts else None,
                }
        return {"version": spec.version, "fraction": spec.fraction, "pairs": pairs}
