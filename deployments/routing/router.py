"""Which version serves a request, and what is recorded around the call.

The data plane owns the request; this owns versions: the traffic split (random or
sticky by routing key), pinning, the call to the version's backend, the samples the
shared canary judge needs and the verdicts it hands back, and the recent per-version
figures `servekit status` shows. Backends come in through the `VersionBackend`
contract, so nothing here knows where a version runs, or imports Ray.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from configs.schema import AppArgs, IngressLiveConfig, RolloutPolicy
from deployments.errors import NotFound, ServekitError, Unavailable
from deployments.observability.logs import get_logger
from deployments.replicas.backend import EmbedResult, VersionBackend
from deployments.routing.canary import Samples, fingerprint, thin
from deployments.routing.rollout import CallWindow
from deployments.routing.shadow import Shadower, ShadowMetrics
from deployments.routing.traffic import TrafficSplitter, without_version

STATUS_WINDOW_S = 60.0


class RoutingMetrics(ShadowMetrics, Protocol):
    """Where traffic weights and rollbacks are recorded."""

    def weight(self, model: str, version: str, weight: int) -> None:
        """A version's effective weight."""

    def rollback(self, model: str, version: str) -> None:
        """An automatic rollback this replica's samples decided."""


class VersionRouter:
    """Routes to model versions; one per ingress replica."""

    def __init__(
        self,
        args: AppArgs,
        backends: Mapping[tuple[str, str], VersionBackend],
        metrics: RoutingMetrics,
    ):
        self.args = args
        self.backends = dict(backends)
        self.live: IngressLiveConfig | None = None
        self.splitter: TrafficSplitter | None = None
        self.windows = {key: CallWindow(STATUS_WINDOW_S) for key in self.backends}
        self.shadow = Shadower(self._shadow_call, metrics)
        self._metrics = metrics
        self._log = get_logger("router")
        # Canary: config fingerprints, samples not yet handed to the judge, and what
        # the judge said last (verdict and aggregated window) per model.
        self._fingerprints: dict[str, str] = {}
        self._samples: dict[str, Samples] = {}
        self._judged: dict[str, dict[str, Any]] = {}
        self.rolled_back: dict[str, dict[str, Any]] = {}

    # ---- configuration ----------------------------------------------------------

    def configure(self, live: IngressLiveConfig) -> None:
        """Apply new live settings. Verdicts decided under another config no longer
        apply; those decided under this one (a restarted replica) come back at the
        next sync with the judge."""
        problems = live.check_against(self.args)
        if problems:
            raise ValueError("; ".join(problems))
        self.live = live
        self.shadow.specs = dict(live.shadow)
        self._fingerprints = {
            model: fingerprint(live.traffic[model], policy)
            for model, policy in live.rollout.items()
        }
        self._samples = {model: [] for model in live.rollout}
        self.rolled_back = {
            model: event
            for model, event in self.rolled_back.items()
            if event["fingerprint"] == self._fingerprints.get(model)
        }
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
        for model in weights:
            shown = self.splitter.weights(model)
            for version in self.args.models[model].versions:
                self._metrics.weight(model, version, shown.get(version, 0))

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

    async def embed(
        self, model: str, version: str, texts: list[str], deadline: float
    ) -> EmbedResult:
        """Call a version, recording the outcome for status and canary watch."""
        started = time.perf_counter()
        try:
            result = await self.backends[(model, version)].embed(texts, deadline)
        except ServekitError as e:
            self._record(model, version, e.status < 500, time.perf_counter() - started)
            raise
        self._record(model, version, True, time.perf_counter() - started)
        return result

    async def _shadow_call(self, model: str, version: str, texts: list[str]) -> EmbedResult:
        deadline = time.monotonic() + self.args.request_timeout_s
        return await self.backends[(model, version)].embed(texts, deadline)

    def maybe_shadow(
        self, model: str, primary: str, texts: list[str], vectors: np.ndarray[Any, Any]
    ) -> None:
        """Mirror a sampled copy of a served request to the model's shadow version, when
        that version has room now (inline: idle inference threads); else it is dropped."""
        self.shadow.maybe_shadow(
            model, primary, texts, vectors, spare=lambda v: self.backends[(model, v)].spare()
        )

    def record(self, model: str, version: str, ok: bool, seconds: float) -> None:
        """Count a call a pipeline made to a version (a recommender's) for status and
        the canary watch."""
        self._record(model, version, ok, seconds)

    def _record(self, model: str, version: str, ok: bool, seconds: float) -> None:
        self.windows[(model, version)].record(ok, seconds)
        policy = self._policy(model)
        if policy is not None and policy.canary == version and model not in self.rolled_back:
            self._samples[model].append((ok, seconds))

    def _policy(self, model: str) -> RolloutPolicy | None:
        return self.live.rollout.get(model) if self.live else None

    # ---- the shared canary judge --------------------------------------------------

    def canary_payload(
        self,
    ) -> tuple[dict[str, tuple[str, dict[str, Any]]], dict[str, Samples], dict[str, Any]]:
        """What to hand the judge now: the watched models' policies (with their
        config fingerprints), the samples taken since the last hand-over, and the
        verdicts this replica acts on (a restarted judge takes them back)."""
        policies = {
            model: (self._fingerprints[model], policy.model_dump())
            for model, policy in (self.live.rollout.items() if self.live else ())
        }
        samples = {model: thin(taken) for model, taken in self._samples.items() if taken}
        self._samples = {model: [] for model in policies}
        known = {model: dict(verdict) for model, verdict in self.rolled_back.items()}
        return policies, samples, known

    def apply_judgement(self, judged: Mapping[str, dict[str, Any]]) -> None:
        """Apply what the judge answered: verdicts in force take the canary's traffic
        away on this replica (at once, for the requests that follow)."""
        changed = False
        for model, answer in judged.items():
            verdict = answer.get("verdict")
            if model not in self._fingerprints:
                continue
            self._judged[model] = answer
            if verdict is None and model in self.rolled_back:
                # The operator cleared it (`servekit rollout clear`): watched afresh.
                cleared = self.rolled_back.pop(model)
                changed = True
                self._log.warning(
                    "canary rollback cleared; the canary has its weight back",
                    extra={"fields": {"model": model, "version": cleared["version"]}},
                )
                continue
            if verdict is None or verdict["fingerprint"] != self._fingerprints[model]:
                continue
            if model not in self.rolled_back:
                self.rolled_back[model] = verdict
                changed = True
                if answer.get("decided_now"):
                    self._metrics.rollback(model, verdict["version"])
                self._log.warning(
                    "canary rolled back",
                    extra={
                        "fields": {
                            "model": model,
                            "version": verdict["version"],
                            "reason": verdict["reason"],
                        }
                    },
                )
        if changed:
            self._apply_weights()

    # ---- reporting --------------------------------------------------------------

    def card(self, model: str, created: int, detail: bool, internal: bool = True) -> dict[str, Any]:
        """The model as `/v1/models` shows it; with `detail`, rollout and shadow state
        too. Without `internal` (callers without the admin scope): only what a caller
        needs, no checksums, deployments, thresholds or per-version figures."""
        weights = self.weights(model)
        configured = self.live.traffic.get(model, {}) if self.live else {}
        versions = []
        for version, spec in self.args.models[model].versions.items():
            backend = self.backends[(model, version)]
            entry: dict[str, Any] = {
                "name": version,
                "weight": weights.get(version, 0),
                "runtime": spec.runtime,
                "device": spec.device,
            }
            if internal:
                entry["configured_weight"] = configured.get(version, 0)
                entry["deployment"] = (
                    "Ingress (inline)" if backend.placement == "inline" else f"{model}-{version}"
                )
                entry["sha256"] = spec.artifact.sha256
            if detail and internal:
                entry["recent"] = self.windows[(model, version)].stats()
            versions.append(entry)
        card: dict[str, Any] = {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "servekit",
            "versions": versions,
        }
        if detail and internal:
            card["rollout"] = self._rollout_state(model)
            card["shadow"] = self.shadow.state(model)
        return card

    def _rollout_state(self, model: str) -> dict[str, Any] | None:
        policy = self._policy(model)
        if policy is None:
            return None
        event = self.rolled_back.get(model)
        judged = self._judged.get(model, {})
        empty = CallWindow(policy.window_s).stats()
        return {
            "canary": policy.canary,
            "state": "rolled_back" if event else "watching",
            "reason": event["reason"] if event else None,
            "decided_at": event["at"] if event else None,
            "policy": policy.model_dump(),
            # Every ingress replica's canary calls, as the shared judge last saw them.
            "window": judged.get("window", empty),
        }
