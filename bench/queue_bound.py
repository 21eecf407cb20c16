"""How well the inline queue bound judges waits, in process, on the shipped versions.

    python bench/queue_bound.py [--clients 4] [--texts 32] [--seconds 15] [--hog]

Loads the shipped `minilm` versions as the Ingress does (one pool of inference
threads, shipped batching bounds, weights from `serve_config.yaml`), then runs
`--clients` clients, each sending requests of `--texts` texts to a version picked by
the traffic weights, for `--seconds` seconds; a refused request (503) waits 50 ms
before its next. With `--hog`, a busy loop in another process takes one core for the
run, standing for a slow phase of the machine. Prints texts/s, requests refused, the
served requests' p50 and p99, and, for each request admitted behind a queue, its wait
over the wait the batch cost predicted (p10 / p50 / p90: 1.0 is exact), then each
version's batch cost (fixed part and part per text, full session and busy lane).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.raw_runtime import make_texts
from configs.schema import AppArgs, InlineBatchingConfig
from deployments.errors import Overloaded
from deployments.replicas.inline_backend import InlineBackend, load_inline

REFUSED_PAUSE_S = 0.05


def _hog(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(
    backends: dict[str, InlineBackend],
    weights: dict[str, float],
    clients: int,
    texts: int,
    seconds: float,
) -> dict[str, float]:
    pool = make_texts(512, 10)
    served = refused = 0
    latencies: list[float] = []
    ratios: list[float] = []
    names = list(weights)

    async def client(seed: int) -> None:
        nonlocal served, refused
        rng = random.Random(seed)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            backend = backends[rng.choices(names, [weights[n] for n in names])[0]]
            batch = [rng.choice(pool) for _ in range(texts)]
            queued = backend.batcher.queued_texts > 0
            predicted = backend.batcher.expected_wait_s(texts) if queued else 0.0
            started = time.perf_counter()
            try:
                await backend.embed(batch, time.monotonic() + 30)
            except Overloaded:
                refused += 1
                await asyncio.sleep(REFUSED_PAUSE_S)
                continue
            took = time.perf_counter() - started
            latencies.append(took)
            served += texts
            if predicted > 0:
                ratios.append(took / predicted)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "texts_per_s": served / elapsed,
        "refused": refused,
        "p50_ms": _quantile(latencies, 0.5) * 1000,
        "p99_ms": _quantile(latencies, 0.99) * 1000,
        "judged": len(ratios),
        "actual_over_predicted_p10": _quantile(ratios, 0.1),
        "actual_over_predicted_p50": _quantile(ratios, 0.5),
        "actual_over_predicted_p90": _quantile(ratios, 0.9),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--hog", action="store_true", help="take one core with a busy loop")
    opts = parser.parse_args()

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = doc["applications"][0]
    args = dict(app["args"])
    args["models"] = {"minilm": args["models"]["minilm"]}
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")["user_config"]
    weights = {f"minilm-{v}": float(w) for v, w in ingress["traffic"]["minilm"].items()}
    loaded = load_inline(AppArgs.model_validate(args))
    backends = {f"{model}-{version}": backend for (model, version), backend in loaded.items()}
    for name, backend in backends.items():
        backend.configure(InlineBatchingConfig(**ingress["batching"][name]))

    hog = None
    if opts.hog:
        hog = multiprocessing.Process(target=_hog, args=(opts.seconds + 2,), daemon=True)
        hog.start()
    try:
        result = asyncio.run(_run(backends, weights, opts.clients, opts.texts, opts.seconds))
    finally:
        if hog is not None:
            hog.terminate()
    print(
        f"{opts.clients} clients x {opts.texts} texts{' (one core taken)' if opts.hog else ''}: "
        f"{result['texts_per_s']:.0f} texts/s, {result['refused']:.0f} refused, "
        f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; wait over predicted "
        f"({result['judged']:.0f} judged) p10 {result['actual_over_predicted_p10']:.2f} "
        f"p50 {result['actual_over_predicted_p50']:.2f} "
        f"p90 {result['actual_over_predicted_p90']:.2f}"
    )
    for name, backend in backends.items():
        for kind, cost in (
            ("full session", backend.batcher.cost),
            ("busy lane", backend.batcher.lane_cost),
        ):
            if cost.per_text_s is not None:
                print(
                    f"  {name} {kind}: {cost.fixed_s * 1000:.1f} ms a batch + "
                    f"{cost.per_text_s * 1000:.2f} ms a text"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
