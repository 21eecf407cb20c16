"""Loading a version's artifact into a runtime, its metadata, and test-only faults."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

from configs.schema import FaultInjection, VersionSpec
from configs.settings import resolve_artifact_uri
from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model
from models.text import TextEmbedder


def load_version(
    model: str,
    version: str,
    spec: VersionSpec,
    artifact_root: str | None,
    store: ArtifactStore,
) -> TextEmbedder:
    """Resolve, verify and load one version's artifact; refuse a runtime mismatch."""
    ref = ArtifactRef(
        uri=resolve_artifact_uri(spec.artifact.uri, artifact_root), sha256=spec.artifact.sha256
    )
    options = RuntimeOptions(
        device=spec.device,
        intra_op_threads=spec.intra_op_threads,
        spinning=spec.intra_op_spinning,
        busy_lanes=spec.busy_lanes,
        micro_batch_size=spec.micro_batch_size,
        gpu_graphs=spec.gpu_graphs,
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


class InjectedFault(RuntimeError):
    """A failure the version's `fault_injection` setting asked for."""


async def inject_fault(fault: FaultInjection) -> None:
    """Delay and/or fail as a version's test-only `fault_injection` asks."""
    if fault.extra_latency_ms:
        await asyncio.sleep(fault.extra_latency_ms / 1000)
    if fault.error_rate and random.random() < fault.error_rate:
        raise InjectedFault("injected fault (fault_injection is set for this version)")


class Wedge:
    """A test-only switch that makes a runtime hang inside inference, as a stuck
    driver or a deadlocked library would: every run blocks until released."""

    def __init__(self) -> None:
        self._released = threading.Event()
        self._released.set()

    @property
    def engaged(self) -> bool:
        """Whether runs hang now."""
        return not self._released.is_set()

    def engage(self) -> None:
        """From now on, runs hang."""
        self._released.clear()

    def release(self) -> None:
        """Let hung runs go on (tests clean up with it)."""
        self._released.set()

    def block_if_engaged(self) -> None:
        """Called in the inference thread before a run."""
        self._released.wait()
