"""An inline version as a `VersionBackend`: the batcher, its deadline, its health."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from configs.schema import AppArgs, InlineBatchingConfig, deployment_name
from deployments.errors import InferenceFailed, ServekitError, Timeout
from deployments.observability.logs import get_logger
from deployments.observability.metrics import ModelMetrics
from deployments.replicas.backend import SHADOW_COPY, EmbedResult, remaining_s
from deployments.replicas.health import PROBE_TEXT, HealthProbe
from deployments.replicas.inline import InlineBatcher
from deployments.replicas.loading import load_version, runtime_metadata
from deployments.replicas.threads import SharedThreads
from deployments.replicas.traffic import REPLICA_TRAFFIC
from models import ArtifactStore


class InlineBackend:
    """One version running in this (ingress) process, behind the backend contract."""

    placement = "inline"

    def __init__(self, label: str, batcher: InlineBatcher, args: AppArgs) -> None:
        self.label = label
        self.batcher = batcher
        # The probe runs through the batcher, as a request would; the batcher tells it
        # when runs start and end, so a busy version is never probed.
        self.health = HealthProbe.from_settings(
            label,
            lambda deadline: self.batcher.embed([PROBE_TEXT], deadline, probe=True),
            args.health,
        )
        batcher.watch(self.health)
        self.timeout_s = args.request_timeout_s
        self._log = get_logger("inline")
        self._meta: dict[str, Any] | None = None

    def configure(self, live: InlineBatchingConfig) -> None:
        """Apply live batching settings."""
        self.batcher.configure(live)

    async def embed(self, texts: list[str], deadline: float) -> EmbedResult:
        """Vectors for `texts`, batched with concurrent requests, by `deadline`."""
        try:
            async with asyncio.timeout(remaining_s(deadline)):  # no extra task
                return await self.batcher.embed(texts, deadline)
        except TimeoutError as e:
            raise Timeout(f"{self.label}: no answer within {self.timeout_s:g} s") from e
        except ServekitError as e:
            e.message = f"{self.label}: {e.message}"
            raise
        except Exception as e:
            if not SHADOW_COPY.get():
                self._log.error(
                    "inline model call failed", exc_info=e, extra={"fields": {"target": self.label}}
                )
            raise InferenceFailed(f"{self.label}: the model failed on this request") from e

    async def metadata(self) -> dict[str, Any]:
        """Signature and runtime facts (loaded before the replica started)."""
        if self._meta is None:
            self._meta = runtime_metadata(self.batcher.runtime)
        return self._meta

    async def ready(self) -> bool:
        """Loaded before the replica started; false while its runtime is wedged."""
        return self.health.ok

    def spare(self) -> bool:
        """Only while the replica's inference threads are idle and nothing is queued:
        a shadow copy never waits in front of, or beside, a caller's request."""
        return self.batcher.threads_idle()


def load_inline(args: AppArgs) -> dict[tuple[str, str], InlineBackend]:
    """Resolve and load every inline version; they share the inference threads (one,
    or as many as the most busy lanes a version has)."""
    if not args.inline_versions():
        return {}
    store = ArtifactStore(
        cache_dir=Path(args.artifact_cache_dir) if args.artifact_cache_dir else None
    )
    lanes = max(args.models[m].versions[v].busy_lanes for m, v in args.inline_versions())
    threads = SharedThreads(lanes)
    out = {}
    for model, version in args.inline_versions():
        spec = args.models[model].versions[version]
        runtime = load_version(model, version, spec, args.artifact_root, store)
        batcher = InlineBatcher(
            runtime,
            ModelMetrics(model, version),
            threads,
            spec.fault_injection,
            traffic=REPLICA_TRAFFIC,
            label=f"{model}/{version}",
        )
        batcher.calibrate()
        out[(model, version)] = InlineBackend(f"{model}/{version}", batcher, args)
    return out


def configure_inline(
    inline: dict[tuple[str, str], InlineBackend], batching: dict[str, InlineBatchingConfig]
) -> None:
    """Apply the live batching settings (by `<model>-<version>`) to each inline version."""
    for (model, version), backend in inline.items():
        backend.configure(batching.get(deployment_name(model, version), InlineBatchingConfig()))
