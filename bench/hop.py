"""What one handle call between two replicas costs, as the Ingress calls a dedicated version.

    python bench/hop.py [--calls 3000] [--concurrency 1,16] [--transports actor,grpc,direct]

Starts a local Ray instance with servekit's Serve settings and two deployments: a caller
and a callee whose methods do no work, so only the hop is measured. For each answer
shape (nothing; one text's vector as a numpy array with its token count, as
`ModelServer.embed` answers; the same vector as raw bytes), each transport (Ray actor
calls, Serve's default; the replicas' gRPC servers; servekit's direct calls, as the
Ingress calls dedicated versions, `deployments/replicas/direct.py`) and each concurrency, the
caller makes `--calls` handle calls and reports the wall time a call takes, and the
CPU time each side spends per call (`time.process_time` of the whole process, so
Ray's own threads count). In-process, it also times pickling the call's arguments
and answer, which Ray does on each side. Prints a table and writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM = 384  # all-MiniLM-L6-v2
TEXT = "red running shoes for trail and road"


def answer(shape: str) -> Any:
    """What the callee answers for one text."""
    if shape == "none":
        return None
    vector = np.random.default_rng(0).random((1, DIM), dtype=np.float32)
    if shape == "bytes":
        return vector.tobytes(), [9]
    return vector, [9]


class Callee:
    """Answers at once, with a fixed answer of the asked shape."""

    def __init__(self) -> None:
        self._answers = {shape: answer(shape) for shape in ("none", "numpy", "bytes")}
        self._direct: Any = None

    async def call(self, texts: list[str], timeout_s: float, shape: str) -> Any:
        """The answer of `shape`; `texts` and `timeout_s` as `ModelServer.embed` gets."""
        return self._answers[shape]

    embed = call  # the name a direct call may use

    async def open_direct(self) -> str:
        """Take direct calls (as a dedicated version's replica does); the KV prefix."""
        from deployments.replicas.direct import replica_server

        if self._direct is None:
            self._direct = replica_server(self)
            await self._direct.start()
        return str(self._direct.key.rsplit("/", 1)[0] + "/")

    def cpu_s(self) -> float:
        """This process's CPU time so far."""
        return time.process_time()


class Caller:
    """Calls the callee as `DedicatedBackend` does, and times it."""

    def __init__(self, callee: Any) -> None:
        self.callee = callee

    async def measure(
        self, shape: str, concurrency: int, calls: int, transport: str
    ) -> dict[str, float]:
        """`calls` handle calls, `concurrency` at a time: calls a second, wall µs per
        call, the median latency and each side's CPU µs per call. `transport`: `actor`
        (Ray's actor calls, the default), `grpc` (`_by_reference=False`) or `direct`."""
        if transport == "direct":
            from deployments.replicas.direct import DirectPool

            pool = DirectPool(await self.callee.open_direct.remote())
            await pool.refresh()

            async def one() -> Any:
                return await pool.call("embed", ([TEXT], 30.0, shape), 30.0)

        else:
            from deployments.replicas.remote import on_calling_loop

            handle = on_calling_loop(self.callee).options(
                method_name="call", _by_reference=transport == "actor"
            )

            async def one() -> Any:
                return await handle.remote([TEXT], 30.0, shape)

        for _ in range(50):  # warm up
            await one()
        callee_cpu = await self.callee.cpu_s.remote()
        own_cpu = time.process_time()
        latencies: list[float] = []
        left = calls

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                await one()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        own_cpu = time.process_time() - own_cpu
        callee_cpu = await self.callee.cpu_s.remote() - callee_cpu
        n = len(latencies)
        return {
            "calls_per_s": round(n / wall, 1),
            "wall_us_per_call": round(wall / n * 1e6, 1),
            "p50_us": round(statistics.median(latencies) * 1e6, 1),
            "caller_cpu_us_per_call": round(own_cpu / n * 1e6, 1),
            "callee_cpu_us_per_call": round(callee_cpu / n * 1e6, 1),
        }


def pickling_us(shape: str, rounds: int = 20000) -> dict[str, float]:
    """In-process: µs to pickle and unpickle the arguments and the answer of one call."""
    args = ([TEXT], 30.0, shape)
    out = answer(shape)
    timings = {}
    for name, obj in (("args", args), ("answer", out)):
        started = time.perf_counter()
        for _ in range(rounds):
            pickle.loads(pickle.dumps(obj, protocol=5))
        timings[f"{name}_us"] = round((time.perf_counter() - started) / rounds * 1e6, 2)
    return timings


def main() -> int:
    """Run every shape at every concurrency and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--transports", default="actor,grpc,direct", help="actor, grpc, direct")
    parser.add_argument("--out", type=Path, default=Path("hop.json"))
    args = parser.parse_args()
    from configs.settings import apply_serve_env

    apply_serve_env()  # the settings `servekit serve` runs with
    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, namespace="serve")
    try:
        callee = serve.deployment(name="callee", max_ongoing_requests=256)(Callee).bind()
        caller = serve.deployment(name="caller")(Caller).bind(callee)
        handle = serve.run(caller, name="hop", route_prefix=None)
        results: dict[str, Any] = {"ray_version": ray.__version__, "shapes": {}}
        for shape in ("none", "numpy", "bytes"):
            entry: dict[str, Any] = {"pickling": pickling_us(shape)}
            for transport in args.transports.split(","):
                for c in (int(x) for x in args.concurrency.split(",")):
                    key = f"{transport}_c{c}"
                    entry[key] = handle.measure.remote(shape, c, args.calls, transport).result()
                    print(f"{shape:<6} {key:<10} {entry[key]}", flush=True)
            print(f"{shape:<6} pickling {entry['pickling']}", flush=True)
            results["shapes"][shape] = entry
    finally:
        serve.shutdown()
        ray.shutdown()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
