"""One model version's replica: resolve and load the artifact, batch, run, report health.

A plain class; `deployments/app.py` turns it into a Serve deployment named
`<model>-<version>`. It batches as an inline version does (`InlineBatcher`): a
request arriving while the replica is idle runs at once, requests arriving while a
batch runs go together in the next, within `max_batch_size` requests and
`max_batch_texts` texts, and a request that would wait too long is refused at once.
Serve's `@serve.batch` instead closes a batch on a timer: every lone request waited
`batch_wait_timeout_s`, and under load the requests that arrived during a run were
cut into several small batches. The settings come from the deployment's
`user_config` and change live through `reconfigure()`.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ray import serve

from configs.schema import (
    FAULT_INJECTION_ENV,
    AppArgs,
    BatchLiveConfig,
    HealthSettings,
    VersionSpec,
)
from configs.settings import tune_interpreter
from deployments.observability.logs import get_logger
from deployments.observability.metrics import ModelMetrics
from deployments.replicas.backend import EmbedResult
from deployments.replicas.direct import VERSION_METHODS, DirectCallee
from deployments.replicas.health import PROBE_TEXT, HealthProbe
from deployments.replicas.inline import InlineBatcher
from deployments.replicas.loading import load_version, runtime_metadata
from deployments.replicas.threads import SharedThreads
from deployments.replicas.traffic import Traffic
from models import ArtifactStore


class ModelServer(DirectCallee):
    """Serves one immutable model version."""

    def __init__(
        self,
        model: str,
        version: str,
        spec: dict[str, Any],
        artifact_root: str | None = None,
        cache_dir: str | None = None,
        health: dict[str, Any] | None = None,
        direct_calls: bool = False,
    ) -> None:
        tune_interpreter()
        self.model = model
        self.version = version
        self.spec = VersionSpec.model_validate(spec)
        self._log = get_logger("model").getChild(f"{model}-{version}")
        store = ArtifactStore(cache_dir=Path(cache_dir) if cache_dir else None)
        started = time.perf_counter()
        runtime = load_version(model, version, self.spec, artifact_root, store)
        self.runtime = runtime
        # A lone request runs on all the runtime's threads; with busy lanes, queued
        # ones run as that many one-thread batches at once, as inline. Inference runs
        # in threads, so the event loop stays free to gather the next batch.
        threads = SharedThreads(max(1, runtime.busy_lanes))
        # Calls in flight and their callers: while one caller that serves one request at
        # a time calls, a lone small request runs on the event loop (as inline).
        self.traffic = Traffic()
        self.batcher = InlineBatcher(
            runtime,
            ModelMetrics(model, version),
            threads,
            self.spec.fault_injection,
            traffic=self.traffic,
            label=f"{model}/{version}",
        )
        self.reconfigure({})  # the dedicated defaults, until Serve applies user_config
        self.batcher.calibrate()
        self.health = HealthProbe.from_settings(
            f"{model}/{version}",
            lambda deadline: self.batcher.embed([PROBE_TEXT], deadline, probe=True),
            HealthSettings.model_validate(health or {}),
        )
        self.batcher.watch(self.health)
        if self.spec.fault_injection is not None:
            self._log.warning(
                "fault injection is ON for this version (test-only setting)",
                extra={"fields": self.spec.fault_injection.model_dump()},
            )
        # Direct calls from the ingress (`direct`), opened on the replica's event loop.
        if direct_calls:
            self.open_direct(VERSION_METHODS)
        self._log.info(
            "loaded",
            extra={
                "fields": {
                    "model": model,
                    "version": version,
                    "device": runtime.device_name,
                    "load_s": round(time.perf_counter() - started, 2),
                }
            },
        )

    def __del__(self) -> Coroutine[Any, Any, None] | None:
        """Serve's replica shutdown, which awaits what this returns: direct callers told
        to stop, the calls held answered (`close_direct`)."""
        return self.close_direct()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply live batching settings without a restart."""
        live = BatchLiveConfig.model_validate(user_config or {})
        self.batcher.configure(live, live.batch_wait_timeout_s)

    async def embed(
        self, texts: list[str], timeout_s: float | None = None, caller: str | None = None
    ) -> EmbedResult:
        """Vectors `[len(texts), dim]` and the tokens read per text. `timeout_s`: what
        the caller has left; work still queued when it runs out is dropped (`Timeout`).
        `caller`: the calling replica's id while it serves one request at a time (None:
        it serves several at once, or does not say)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 3600.0)
        self.traffic.enter(caller, concurrent=caller is None)
        try:
            return await self.batcher.embed(texts, deadline)
        finally:
            self.traffic.leave()

    def batch_settings(self) -> dict[str, float]:
        """The batching settings in effect (for operators and tests)."""
        return {
            "max_batch_size": self.batcher.max_batch_size,
            "max_batch_texts": self.batcher.max_batch_texts,
            "batch_wait_timeout_s": self.batcher.batch_wait_s,
            "max_queued_texts": self.batcher.max_queued_texts,
            "max_queue_wait_s": self.batcher.max_queue_wait_s,
        }

    def metadata(self) -> dict[str, Any]:
        """Signature and runtime facts for the inference protocol's metadata routes."""
        return runtime_metadata(self.runtime)

    def ready(self) -> bool:
        """True while the runtime is loaded and its last health verdict is good."""
        return self.runtime.ready and self.health.ok

    async def check_health(self) -> None:
        """Serve's health probe: raises when the runtime is not loaded or is wedged (a
        run stuck past `health.hung_run_s`, or an idle probe without an answer); Serve
        then replaces this replica."""
        if not self.runtime.ready:
            raise RuntimeError("runtime is not ready")
        await self.health.check()

    def wedge(self) -> str:
        """Test-only: make this replica's runtime hang from its next run on. Refused
        unless the version has `fault_injection` (which needs the test setting)."""
        if self.spec.fault_injection is None:
            raise PermissionError(
                f"wedge needs fault_injection on this version (and {FAULT_INJECTION_ENV}=1)"
            )
        self.batcher.wedge.engage()
        self._log.warning("runtime wedged on purpose (test-only)")
        return str(serve.get_replica_context().replica_id.unique_id)


def model_server_args(config: AppArgs, model: str, version: str) -> tuple[Any, ...]:
    """The arguments `ModelServer` is bound with for one version."""
    spec = config.models[model].versions[version]
    return (
        model,
        version,
        spec.model_dump(mode="json"),
        config.artifact_root,
        config.artifact_cache_dir,
        config.health.model_dump(mode="json"),
        config.dedicated_calls == "direct",
    )
