"""One model version's replica: resolve and load the artifact, batch, run, report health.

A plain class; `deployments/app.py` turns it into a Serve deployment named
`<model>-<version>`. Batching uses Serve's `@serve.batch`; its size and wait come
from the deployment's `user_config` and change live through `reconfigure()`.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from ray import serve

from configs.schema import BatchLiveConfig, FaultInjection, VersionSpec
from configs.settings import resolve_artifact_uri
from deployments.logs import get_logger
from deployments.metrics import ModelMetrics
from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model
from models.text import TextEmbedder

EmbedResult = tuple[npt.NDArray[np.float32], int]
_DEFAULT_BATCH = BatchLiveConfig()


class ModelServer:
    """Serves one immutable model version."""

    def __init__(
        self,
        model: str,
        version: str,
        spec: dict[str, Any],
        artifact_root: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.spec = VersionSpec.model_validate(spec)
        self._log = get_logger("model").getChild(f"{model}-{version}")
        store = ArtifactStore(cache_dir=Path(cache_dir) if cache_dir else None)
        started = time.perf_counter()
        runtime = load_version(model, version, self.spec, artifact_root, store)
        self.runtime: TextEmbedder = runtime
        # One inference at a time per replica: the runtime already uses every core it
        # is given, and the event loop stays free to gather the next batch.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._metrics = ModelMetrics(model, version)
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
        live = BatchLiveConfig.model_validate(user_config or {})
        self._batched.set_max_batch_size(live.max_batch_size)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(live.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def embed(self, texts: list[str]) -> EmbedResult:
        """Vectors `[len(texts), dim]` and the number of tokens read."""
        fault = self.spec.fault_injection
        if fault is not None:
            await inject_fault(fault)
        result: EmbedResult = await self._batched(texts)
        return result

    @serve.batch(
        max_batch_size=_DEFAULT_BATCH.max_batch_size,
        batch_wait_timeout_s=_DEFAULT_BATCH.batch_wait_timeout_s,
    )
    async def _batched(self, requests: list[list[str]]) -> list[EmbedResult]:
        flat = [text for texts in requests for text in texts]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        vectors, tokens = await loop.run_in_executor(
            self._executor, self.runtime.embed_counted, flat
        )
        self._metrics.observe_batch(len(flat), time.perf_counter() - started)
        results = split_batch([len(texts) for texts in requests], vectors, tokens)
        if len(results) != len(requests):  # list in, list out
            raise RuntimeError(f"{len(results)} results for {len(requests)} requests")
        return results

    def batch_settings(self) -> dict[str, float]:
        """The batching settings in effect (for operators and tests)."""
        return {
            "max_batch_size": self._batched._get_max_batch_size(),  # type: ignore[attr-defined]
            "batch_wait_timeout_s": self._batched._get_batch_wait_timeout_s(),  # type: ignore[attr-defined]
        }

    def metadata(self) -> dict[str, Any]:
        """Signature and runtime facts for the inference protocol's metadata routes."""
        return runtime_metadata(self.runtime)

    def ready(self) -> bool:
        """True once the runtime is loaded (a replica only serves after `__init__`)."""
        return self.runtime.ready

    def check_health(self) -> None:
        """Serve's health probe: a replica whose runtime is not ready is replaced."""
        if not self.runtime.ready:
            raise RuntimeError("runtime is not ready")


class InjectedFault(RuntimeError):
    """A failure the version's `fault_injection` setting asked for."""


async def inject_fault(fault: FaultInjection) -> None:
    """Delay and/or fail as a version's test-only `fault_injection` asks."""
    if fault.extra_latency_ms:
        await asyncio.sleep(fault.extra_latency_ms / 1000)
    if fault.error_rate and random.random() < fault.error_rate:
        raise InjectedFault("injected fault (fault_injection is set for this version)")


def runtime_metadata(runtime: TextEmbedder) -> dict[str, Any]:
    """Signature and runtime facts of a loaded version."""
    meta = runtime.meta
    return {
        "runtime": meta.runtime,
        "device": runtime.device_name,
        "inputs": [t.model_dump() for t in meta.inputs],
        "outputs": [t.model_dump() for t in meta.outputs],
        "max_seq_length_tokens": meta.max_seq_length_tokens,
        "embedding_dim": meta.embedding_dim,
    }


def load_version(
    model: str,
    version: str,
    spec: VersionSpec,
    artifact_root: str | None,
    store: ArtifactStore,
    inline: bool = False,
) -> TextEmbedder:
    """Resolve, verify and load one version's artifact; refuse a runtime mismatch.
    `inline`: loaded by the ingress's batcher, the only user of busy lanes."""
    ref = ArtifactRef(
        uri=resolve_artifact_uri(spec.artifact.uri, artifact_root), sha256=spec.artifact.sha256
    )
    options = RuntimeOptions(
        device=spec.device,
        intra_op_threads=spec.intra_op_threads,
        spinning=spec.intra_op_spinning,
        busy_lanes=spec.busy_lanes if inline else 1,
        micro_batch_size=spec.micro_batch_size,
    )
    runtime = load_model(ref, options, store)
    if runtime.meta.runtime != spec.runtime:
        raise ValueError(
            f"{model}/{version}: config says runtime {spec.runtime}, "
            f"the artifact is {runtime.meta.runtime}"
        )
    if not isinstance(runtime, TextEmbedder):
        raise TypeError(f"{model}/{version}: not a text embedding runtime")
    return runtime


def split_batch(
    sizes: list[int], vectors: npt.NDArray[np.float32], tokens: list[int]
) -> list[EmbedResult]:
    """Cut a batch's outputs back into one (vectors, token count) per request."""
    results: list[EmbedResult] = []
    offset = 0
    for size in sizes:
        end = offset + size
        results.append((vectors[offset:end], sum(tokens[offset:end])))
        offset = end
    return results
