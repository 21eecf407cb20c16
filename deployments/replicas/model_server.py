"""One model version's replica: resolve and load the artifact, batch, run, report health.

A plain class; `deployments/app.py` turns it into a Serve deployment named
`<model>-<version>`. Batching uses Serve's `@serve.batch`; its size and wait come
from the deployment's `user_config` and change live through `reconfigure()`.

A batch is bounded both in requests (`max_batch_size`) and in texts
(`max_batch_texts`). Serve's batcher knows one bound, measured by a size function,
so each queued item carries the live bounds and the size of a batch is the larger of
its request count scaled to texts and its text count: it stays within
`max_batch_texts` exactly when both bounds hold. A request larger than
`max_batch_texts` counts as `max_batch_texts` and runs alone.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from ray import serve

from configs.schema import (
    FAULT_INJECTION_ENV,
    AppArgs,
    BatchLiveConfig,
    HealthSettings,
    VersionSpec,
)
from deployments.errors import Timeout
from deployments.observability.logs import get_logger
from deployments.observability.metrics import ModelMetrics
from deployments.replicas.backend import EmbedResult, split_batch
from deployments.replicas.health import PROBE_TEXT, HealthProbe
from deployments.replicas.loading import Wedge, inject_fault, load_version, runtime_metadata
from models import ArtifactStore
from models.text import TextEmbedder

_DEFAULT_BATCH = BatchLiveConfig()


class _Item(NamedTuple):
    """One queued request with its deadline and the live bounds it was queued under."""

    texts: list[str]
    deadline: float  # time.monotonic() of this process
    max_batch_size: int
    max_batch_texts: int


def batch_size(items: list[_Item]) -> int:
    """The size of a would-be batch in texts, for Serve's batcher (see the module doc)."""
    if not items:
        return 0
    size, texts = items[-1].max_batch_size, items[-1].max_batch_texts
    by_requests = -(-len(items) * texts // size)
    by_texts = sum(min(len(item.texts), texts) for item in items)
    return max(by_requests, by_texts)


class ModelServer:
    """Serves one immutable model version."""

    def __init__(
        self,
        model: str,
        version: str,
        spec: dict[str, Any],
        artifact_root: str | None = None,
        cache_dir: str | None = None,
        health: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.spec = VersionSpec.model_validate(spec)
        self._log = get_logger("model").getChild(f"{model}-{version}")
        store = ArtifactStore(cache_dir=Path(cache_dir) if cache_dir else None)
        started = time.perf_counter()
        runtime = load_version(model, version, self.spec, artifact_root, store)
        self.runtime: TextEmbedder = runtime
        self.live = _DEFAULT_BATCH
        # One inference at a time per replica: the runtime already uses every core it
        # is given, and the event loop stays free to gather the next batch.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._metrics = ModelMetrics(model, version)
        self._wedge = Wedge()
        self.health = HealthProbe.from_settings(
            f"{model}/{version}",
            lambda deadline: self._batched(
                _Item([PROBE_TEXT], deadline, 1, self.live.max_batch_texts)
            ),
            HealthSettings.model_validate(health or {}),
        )
        if self.spec.fault_injection is not None:
            self._log.warning(
                "fault injection is ON for this version (test-only setting)",
                extra={"fields": self.spec.fault_injection.model_dump()},
            )
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

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply live batching settings without a restart."""
        self.live = BatchLiveConfig.model_validate(user_config or {})
        # Serve's bound is in texts; see `batch_size`.
        self._batched.set_max_batch_size(self.live.max_batch_texts)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(self.live.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def embed(self, texts: list[str], timeout_s: float | None = None) -> EmbedResult:
        """Vectors `[len(texts), dim]` and the tokens read per text. `timeout_s`: what
        the caller has left; work still queued when it runs out is dropped."""
        fault = self.spec.fault_injection
        if fault is not None:
            await inject_fault(fault)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 3600.0)
        item = _Item(texts, deadline, self.live.max_batch_size, self.live.max_batch_texts)
        result: EmbedResult | None = await self._batched(item)
        if result is None:
            raise Timeout("the deadline passed before the model ran")
        return result

    @serve.batch(
        max_batch_size=_DEFAULT_BATCH.max_batch_texts,
        batch_wait_timeout_s=_DEFAULT_BATCH.batch_wait_timeout_s,
        batch_size_fn=batch_size,
    )
    async def _batched(self, items: list[_Item]) -> list[EmbedResult | None]:
        now = time.monotonic()
        live = [item for item in items if item.deadline > now]
        if len(live) < len(items):
            self._metrics.dropped("expired", len(items) - len(live))
        results: dict[int, EmbedResult] = {}
        if live:
            flat = [text for item in live for text in item.texts]
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            token = self.health.run_started()
            ok = False
            try:
                vectors, tokens = await loop.run_in_executor(self._executor, self._run, flat)
                ok = True
            finally:
                self.health.run_finished(token, ok)
            self._metrics.observe_batch(len(flat), time.perf_counter() - started)
            parts = split_batch([len(item.texts) for item in live], vectors, tokens)
            results = {id(item): part for item, part in zip(live, parts, strict=True)}
        return [results.get(id(item)) for item in items]

    def _run(self, texts: list[str]) -> Any:
        self._wedge.block_if_engaged()
        return self.runtime.embed_counted(texts)

    def batch_settings(self) -> dict[str, float]:
        """The batching settings in effect (for operators and tests)."""
        return {
            "max_batch_size": self.live.max_batch_size,
            "max_batch_texts": self._batched._get_max_batch_size(),  # type: ignore[attr-defined]
            "batch_wait_timeout_s": self._batched._get_batch_wait_timeout_s(),  # type: ignore[attr-defined]
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
        self._wedge.engage()
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
    )
