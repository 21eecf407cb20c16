"""Online read of one user's 20 features, as the request path does it
(`FeatureService.read`: one round trip to the store, then the values with their
defaults), against a local redis-server this script starts, and against the embedded
SQLite store, on the event loop Ray's replicas run (uvloop). Goal: p50 <= 1 ms against
local Redis.

Writes bench/results/features.json and adds its figure and ratio to
bench/results/latest.json (`figures`, `ratios`) when that file exists. A few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.features import load_definitions
from deployments.pipelines.features import FeatureService
from stores.events import Event
from stores.features import OnlineStore
from stores.features_redis import RedisFeatureStore
from stores.features_sqlite import SqliteFeatureStore

GOAL_P50_MS = 1.0
TENANT, USER = "bench", "u-bench"
ATTRS = {
    f"i{n}": {"category": f"c{n % 7}", "brand": f"b{n % 5}", "tags": [f"t{n % 3}"], "price": n}
    for n in range(60)
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free port, no persistence; its url once it answers."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is missing: run `make servers`")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def history() -> list[Event]:
    """A user with every feature set: 200 events over 60 items."""
    kinds = ["view", "view", "click", "add_to_cart", "purchase"]
    start = datetime.now(UTC) - timedelta(hours=2)
    return [
        Event(USER, f"i{n % 60}", kinds[n % 5], start + timedelta(seconds=n)) for n in range(200)
    ]


async def measure(store: OnlineStore, reads: int) -> dict[str, Any]:
    """p50/p99 of `FeatureService.read` of the user's 20 features over `reads` calls."""
    service = FeatureService(load_definitions(), store, None, None, logging.getLogger("bench"))
    await store.replace(service.rows(TENANT, history(), ATTRS))
    got = await service.read(TENANT, "user", USER)
    values = got.views["user_activity"]
    assert got.fresh["user_activity"], "the user's row was not written"
    assert len(values) == 20, len(values)
    for _ in range(200):  # warm up connections and caches
        await service.read(TENANT, "user", USER)
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        await service.read(TENANT, "user", USER)
        times.append(time.perf_counter() - started)
    await service.close()
    times.sort()
    return {
        "reads": reads,
        "features": len(values),
        "p50_ms": round(times[len(times) // 2] * 1000, 3),
        "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3),
    }


def run(coro: Any) -> Any:
    """On uvloop, as Ray's replicas run (when installed; Ray ships it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "features.json")
    parser.add_argument("--latest", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    proc, url = start_redis()
    try:
        redis = run(measure(RedisFeatureStore(url, prefix="bench:fs:"), args.reads))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    with tempfile.TemporaryDirectory() as tmp:
        embedded = run(measure(SqliteFeatureStore(Path(tmp) / "f.db"), args.reads))
    figures = {
        "features_read_redis_p50_ms": redis["p50_ms"],
        "features_read_redis_p99_ms": redis["p99_ms"],
        "features_read_sqlite_p50_ms": embedded["p50_ms"],
    }
    ratios = {"features_read_redis_p50_vs_goal": round(redis["p50_ms"] / GOAL_P50_MS, 3)}
    results = {"redis": redis, "sqlite": embedded, "figures": figures, "ratios": ratios}
    print(f"\n{'online read, one user, 20 features':<40}{'p50 ms':>9}{'p99 ms':>9}")
    for name, f in (("Redis (local redis-server)", redis), ("embedded SQLite", embedded)):
        print(f"{name:<40}{f['p50_ms']:>9.3f}{f['p99_ms']:>9.3f}")
    verdict = "meets" if redis["p50_ms"] <= GOAL_P50_MS else "MISSES"
    print(f"Redis p50 {redis['p50_ms']} ms {verdict} the goal of {GOAL_P50_MS} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.latest.exists():
        latest = json.loads(args.latest.read_text())
        latest.setdefault("figures", {}).update(figures)
        latest.setdefault("ratios", {}).update(ratios)
        args.latest.write_text(json.dumps(latest, indent=2) + "\n")
        print(f"added the figures to {args.latest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
