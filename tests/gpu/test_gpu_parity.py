"""The example model on a GPU: fp16 torch and ONNX Runtime's CUDA provider against the
same versions in fp32 on the CPU, loaded the way replicas load them, plus the batch-1
latency on the GPU.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from models import ArtifactRef, ArtifactStore, Runtime, RuntimeOptions, load_model
from models.runtime import Device
from models.torch_runtime import TorchEmbedder
from tests.parity.test_minilm_parity import TEXTS

pytestmark = pytest.mark.gpu

MIN_COSINE = 0.999
LATENCY_RUNS = 200


def _load(
    manifest: dict[str, Any],
    store_dir: Path,
    cache: ArtifactStore,
    version: str,
    device: Device,
    **options: Any,
) -> Runtime:
    entry = manifest[version]
    ref = ArtifactRef(str(store_dir / entry["file"]), entry["sha256"])
    opts = RuntimeOptions(device=device, micro_batch_size=len(TEXTS), **options)
    return load_model(ref, opts, cache)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("cache"))


def _min_cosine(
    gpu: Runtime, cpu: Runtime, texts: list[str] = TEXTS
) -> tuple[float, npt.NDArray[Any]]:
    a = np.stack(gpu.predict_batch(texts)).astype(np.float64)
    b = np.stack(cpu.predict_batch(texts)).astype(np.float64)
    assert a.shape == b.shape == (len(texts), 384)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), cos


def _batch1_latency_ms(runtime: Runtime) -> tuple[float, float]:
    """Median and 99th percentile of one short text, end to end through the runtime
    (tokenize, copy in, run, copy out), after a warm-up."""
    for _ in range(20):
        runtime.predict_batch(["warm up the kernels"])
    times = []
    for i in range(LATENCY_RUNS):
        start = time.perf_counter()
        runtime.predict_batch([f"red running shoes, size {i % 13}"])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=100)[98]


def test_torch_fp16_on_gpu_matches_cpu_fp32(
    cuda_torch: str,
    manifest: dict[str, Any],
    example_store: Path,
    cache: ArtifactStore,
    report: list[str],
) -> None:
    import torch

    gpu = _load(manifest, example_store, cache, "v1-torch", "gpu")
    cpu = _load(manifest, example_store, cache, "v1-torch", "cpu")
    assert gpu.device_name == "cuda:0"
    # The runtime halves the weights on GPU (RuntimeOptions.gpu_fp16, on by default).
    assert next(gpu._model.parameters()).dtype == torch.float16
    low, cos = _min_cosine(gpu, cpu)
    p50, p99 = _batch1_latency_ms(gpu)
    report.append(
        f"gpu v1-torch fp16 vs cpu fp32: min cosine {low:.5f}; "
        f"batch 1 on {cuda_torch}: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    assert low >= MIN_COSINE, f"per-text cosines: {np.round(cos, 5).tolist()}"


def test_torch_cuda_graphs_match_eager_on_every_batch_shape(
    cuda_torch: str,
    manifest: dict[str, Any],
    example_store: Path,
    cache: ArtifactStore,
    report: list[str],
) -> None:
    graphs = _load(manifest, example_store, cache, "v1-torch", "gpu")
    eager = _load(manifest, example_store, cache, "v1-torch", "gpu", gpu_graphs=False)
    assert isinstance(graphs, TorchEmbedder)
    assert isinstance(eager, TorchEmbedder)
    assert graphs._graphs is not None
    assert graphs._graphs.failure is None, graphs._graphs.failure
    # Every bucket was captured at load: 12 texts a micro-batch -> rows 1, 2, 4, 8, 12.
    assert graphs.cuda_graphs == 5 * 10
    assert eager.cuda_graphs == 0
    low, cos = _min_cosine(graphs, eager)
    assert low >= 0.9999, f"per-text cosines: {np.round(cos, 5).tolist()}"
    # Batches of every size, each padded to its own bucket, in input order.
    for n in range(1, len(TEXTS) + 1):
        low, cos = _min_cosine(graphs, eager, TEXTS[:n])
        assert low >= 0.9999, (n, cos.tolist())
    p50_graphs, p99_graphs = _batch1_latency_ms(graphs)
    p50_eager, p99_eager = _batch1_latency_ms(eager)
    report.append(
        f"gpu v1-torch fp16, batch 1 on {cuda_torch}: CUDA graphs p50 {p50_graphs:.2f} / "
        f"p99 {p99_graphs:.2f} ms, eager p50 {p50_eager:.2f} / p99 {p99_eager:.2f} ms"
    )


def test_onnx_on_cuda_matches_cpu_fp32(
    cuda_onnx: str,
    manifest: dict[str, Any],
    example_store: Path,
    cache: ArtifactStore,
    report: list[str],
) -> None:
    gpu = _load(manifest, example_store, cache, "v1", "gpu")
    cpu = _load(manifest, example_store, cache, "v1", "cpu")
    # ONNX Runtime falls back to the CPU quietly when CUDA cannot load: make sure it did not.
    assert gpu.device_name == "cuda", "the CUDA provider did not load (CUDA or cuDNN missing?)"
    assert cpu.device_name == "cpu"
    low, cos = _min_cosine(gpu, cpu)
    p50, p99 = _batch1_latency_ms(gpu)
    report.append(
        f"gpu v1 ONNX (CUDA provider) vs cpu fp32: min cosine {low:.5f}; "
        f"batch 1 on {cuda_onnx}: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    assert low >= MIN_COSINE, f"per-text cosines: {np.round(cos, 5).tolist()}"
