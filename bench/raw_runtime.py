"""Raw runtime throughput: each example version in-process, no serving in the way.

    python bench/raw_runtime.py [--store artifacts] [--seconds 2] [--out bench/results/raw.json]
    python bench/raw_runtime.py --lanes   # one batch on all threads vs two one-thread lanes
    python bench/raw_runtime.py --latency 3000   # batch-1 run times: p50, p90, p99, max
    python bench/raw_runtime.py --micro-batches  # batches of 32 in passes of 64/32/16/8

Prints texts/s for batch sizes 1, 8, 32, 128 on short (~12 tokens) and long
(~128 tokens) texts, and writes the same figures as JSON. Serving benchmarks divide
by these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ArtifactRef, ArtifactStore, Runtime, RuntimeOptions, load_model

BATCH_SIZES = (1, 8, 32, 128)
LANE_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
MICRO_BATCH_SIZES = (64, 32, 16, 8)
_WORDS = (
    "search ranking model replica batch latency vector embedding user product query "
    "catalog shipping review price customer session click cart brand color size"
).split()


def make_texts(n: int, words: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences of `words` words (about 1.1 tokens a word)."""
    out = []
    for i in range(n):
        picked = [_WORDS[(seed + i * 7 + j * 13) % len(_WORDS)] for j in range(words)]
        out.append(" ".join(picked) + f" {i}.")
    return out


def texts_per_second(runtime: Runtime, texts: list[str], batch: int, seconds: float) -> float:
    """Sustained throughput of `predict_batch` at one batch size."""
    runtime.predict_batch(texts[:batch])  # warm this shape
    done = 0
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        runtime.predict_batch(chunk)
        done += batch
        i += batch
    return done / (time.perf_counter() - start)


def lanes_texts_per_second(runtime: Any, texts: list[str], batch: int, seconds: float) -> float:
    """Throughput of two busy lanes: two threads, each running its own batches on the
    runtime's one-thread session at the same time (`embed_token_ids(busy=True)`)."""
    import threading

    ids = runtime.tokenize(texts)
    runtime.embed_token_ids(ids[:batch], busy=True)
    done = [0, 0]
    stop = time.perf_counter() + seconds

    def lane(k: int) -> None:
        i = k * batch
        while time.perf_counter() < stop:
            chunk = [ids[(i + j) % len(ids)] for j in range(batch)]
            runtime.embed_token_ids(chunk, busy=True)
            done[k] += batch
            i += 2 * batch

    start = time.perf_counter()
    threads = [threading.Thread(target=lane, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def run_lanes(store_dir: Path, seconds: float, versions: list[str] | None) -> dict[str, Any]:
    """Short texts, per batch size: one batch at a time on the default session against
    two one-thread lanes side by side (what `busy_lanes: 2` does under load)."""
    manifest = json.loads((store_dir / "manifest.json").read_text())
    store = ArtifactStore()
    texts = make_texts(512, 10)
    results: dict[str, Any] = {}
    for version, entry in manifest["models"]["minilm"]["versions"].items():
        if (versions and version not in versions) or entry.get("runtime") != "onnx":
            continue
        ref = ArtifactRef(str(store_dir / entry["file"]), entry["sha256"])
        runtime: Any = load_model(ref, RuntimeOptions(busy_lanes=2), store)
        results[version] = {
            "one_at_a_time": {
                str(b): round(texts_per_second(runtime, texts, b, seconds), 1)
                for b in LANE_BATCH_SIZES
            },
            "two_lanes": {
                str(b): round(lanes_texts_per_second(runtime, texts, b, seconds), 1)
                for b in LANE_BATCH_SIZES
            },
        }
        del runtime
    return results


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    """Pseudo-sentences of 3 to 20 words, lengths mixed as a request's texts are."""
    return [make_texts(1, 3 + (i * 5) % 18, seed + i)[0] for i in range(n)]


def run_micro_batches(
    store_dir: Path, seconds: float, versions: list[str] | None
) -> dict[str, Any]:
    """Batches of 32 per micro-batch size (texts per forward pass): one batch at a time
    on the full session and, for ONNX versions, two one-thread lanes side by side; on
    texts of mixed length (3-20 words) and on long ones (~128 tokens)."""
    manifest = json.loads((store_dir / "manifest.json").read_text())
    store = ArtifactStore()
    shapes = {"mixed": mixed_texts(512), "long": make_texts(256, 110)}
    results: dict[str, Any] = {}
    for version, entry in manifest["models"]["minilm"]["versions"].items():
        if versions and version not in versions:
            continue
        ref = ArtifactRef(str(store_dir / entry["file"]), entry["sha256"])
        lanes = 2 if entry.get("runtime") == "onnx" else 1
        rows: dict[str, Any] = {}
        for size in MICRO_BATCH_SIZES:
            options = RuntimeOptions(spinning="during_run", busy_lanes=lanes, micro_batch_size=size)
            runtime: Any = load_model(ref, options, store)
            for shape, texts in shapes.items():
                row = rows.setdefault(shape, {})
                row[f"full_{size}"] = round(texts_per_second(runtime, texts, 32, seconds), 1)
                if runtime.busy_lanes:
                    figure = lanes_texts_per_second(runtime, texts, 32, seconds)
                    row[f"lanes_{size}"] = round(figure, 1)
            del runtime
        results[version] = rows
    return results


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99 and the longest of run times given in seconds, in milliseconds."""
    if not seconds:
        raise ValueError("no run times")
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(ordered[round(q * (len(ordered) - 1))] * 1000, 2)

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": at(1.0)}


def run_latency(store_dir: Path, runs: int, versions: list[str] | None) -> dict[str, Any]:
    """Batch-1 run times, one short text after another, each version on the sessions a
    replica runs it with (threads spinning only during a run, two busy lanes): the
    model's own spread on this machine, with whatever else runs beside it."""
    manifest = json.loads((store_dir / "manifest.json").read_text())
    store = ArtifactStore()
    texts = make_texts(512, 10)
    results: dict[str, Any] = {}
    for version, entry in manifest["models"]["minilm"]["versions"].items():
        if versions and version not in versions:
            continue
        ref = ArtifactRef(str(store_dir / entry["file"]), entry["sha256"])
        runtime = load_model(ref, RuntimeOptions(spinning="during_run", busy_lanes=2), store)
        runtime.predict_batch(texts[:1])
        took = []
        for i in range(runs):
            started = time.perf_counter()
            runtime.predict_batch([texts[i % len(texts)]])
            took.append(time.perf_counter() - started)
        results[version] = percentiles_ms(took)
        del runtime
    return results


def run(store_dir: Path, seconds: float, versions: list[str] | None) -> dict[str, Any]:
    """Measure every version in the store's manifest."""
    manifest = json.loads((store_dir / "manifest.json").read_text())
    entries = manifest["models"]["minilm"]["versions"]
    store = ArtifactStore()
    shapes = {"short": make_texts(512, 10), "long": make_texts(512, 110)}
    results: dict[str, Any] = {}
    for version, entry in entries.items():
        if versions and version not in versions:
            continue
        ref = ArtifactRef(str(store_dir / entry["file"]), entry["sha256"])
        runtime = load_model(ref, RuntimeOptions(), store)
        results[version] = {
            shape: {
                str(b): round(texts_per_second(runtime, texts, b, seconds), 1) for b in BATCH_SIZES
            }
            for shape, texts in shapes.items()
        }
        del runtime
    return results


def print_table(results: dict[str, Any]) -> None:
    """One row per version and text shape, texts/s per batch size."""
    header = f"{'version':<10} {'texts':<6}" + "".join(f"{'b' + str(b):>10}" for b in BATCH_SIZES)
    print(header)
    print("-" * len(header))
    for version, shapes in results.items():
        for shape, row in shapes.items():
            cells = "".join(f"{row[str(b)]:>10.1f}" for b in BATCH_SIZES)
            print(f"{version:<10} {shape:<6}{cells}")
    print("(texts/s, in-process, one runtime at a time)")


def print_rows(results: dict[str, Any], cell: Callable[[str, float], str]) -> None:
    """One line per version and row name (a mode, a text shape), its cells after it."""
    for version, rows in results.items():
        for name, row in rows.items():
            print(f"{version:<9} {name:<14}" + "".join(cell(k, v) for k, v in row.items()))


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="raw runtime throughput")
    parser.add_argument("--store", type=Path, default=Path("artifacts"))
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--version", action="append", help="only these versions")
    parser.add_argument("--out", type=Path, default=Path("bench/results/raw.json"))
    parser.add_argument("--lanes", action="store_true", help="all threads vs two lanes")
    parser.add_argument("--latency", type=int, metavar="RUNS", help="batch-1 run times")
    parser.add_argument(
        "--micro-batches", action="store_true", help="batches of 32 per micro-batch size"
    )
    args = parser.parse_args()
    if args.micro_batches:
        figures = run_micro_batches(args.store, args.seconds, args.version)
        print_rows(figures, lambda size, value: f"  {size} {value:.1f}")
        print("(texts/s, batches of 32, in-process; full: one batch at a time on a")
        print(" session of all threads, lanes: two one-thread batches at once; _N: texts a pass)")
        return 0
    if args.latency:
        for version, figures in run_latency(args.store, args.latency, args.version).items():
            print(f"{version:<4} " + "  ".join(f"{k[:-3]} {v:.2f}" for k, v in figures.items()))
        print(f"(ms, batch 1, {args.latency} runs a version, in-process)")
        return 0
    if args.lanes:
        lanes = run_lanes(args.store, args.seconds, args.version)
        print_rows(lanes, lambda batch, value: f"{'b' + batch:>6}{value:>8.1f}")
        print("(texts/s, short texts, in-process)")
        return 0
    results = run(args.store, args.seconds, args.version)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "unit": "texts_per_second",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds_per_cell": args.seconds,
        "results": results,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
