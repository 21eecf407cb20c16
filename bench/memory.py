"""Peak memory of `servekit serve` per process, as `make bench` counts it.

    python bench/memory.py [--seconds 6] [--warmup 2]

Starts the shipped config as bench/serving.py does (`servekit serve`, auth on, a free
port), runs each serving workload briefly, and samples every process of the tree once
a second: the tree's peak RSS (what `make bench` reports as peak memory) and each
process's own peak RSS, PSS and USS (from /proc/<pid>/smaps_rollup), largest first.
Stops the server with SIGTERM to its process group and checks that nothing is left.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serving
from bench.loadgen import run_workload


def _kb(pid: int) -> tuple[int, int, int]:
    """RSS, PSS and USS of one process, in kB (zeros once it is gone)."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0])
    except (OSError, ValueError):
        return 0, 0, 0
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields.get("Rss", 0), fields.get("Pss", 0), uss


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if words and words[0].startswith("ray::"):
        return words[0]
    return " ".join(Path(w).name if w.startswith("/") else w for w in words[:4])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        auth_env, key = serving.bench_credentials(Path(tmp))
        argv, port, env = serving.servers(Path(tmp))["servekit"]
        server = serving.Server(
            "servekit", argv, port, Path(tmp) / "servekit.log", {**env, **auth_env},
            f"Bearer {key}",
        )  # fmt: skip
        peaks: dict[int, list[int | str]] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for pid in serving._descendants(server.proc.pid):
                    rss, pss, uss = _kb(pid)
                    entry = peaks.setdefault(pid, ["", 0, 0, 0])
                    if rss >= int(entry[1]):
                        entry[0] = _name(pid)  # a worker's name changes once it hosts an actor
                    entry[1:] = [
                        max(int(a), b) for a, b in zip(entry[1:], (rss, pss, uss), strict=True)
                    ]
                time.sleep(1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            server.wait_ready(serving.bodies(1)[0])
            for name, texts, connections in serving.WORKLOADS:
                body = serving.bodies(texts)
                f = run_workload(
                    "127.0.0.1", port, "/v1/embeddings", body, connections, args.warmup,
                    args.seconds, server.auth,
                )  # fmt: skip
                print(f"{name}: {f['ok']} answered, {f['errors']} errors", flush=True)
        finally:
            stop.set()
            sampler.join()
            server.stop()
        left = [p for p in peaks if Path(f"/proc/{p}").exists() and _kb(p)[0]]
    print(f"peak memory of the process tree: {server.peak_rss / 2**20:.0f} MB")
    print(f"{'RSS MB':>7}{'PSS MB':>7}{'USS MB':>7}  process (each at its own peak)")
    for name, rss, pss, uss in sorted(peaks.values(), key=lambda e: -int(e[1])):
        print(f"{int(rss) // 1024:>7}{int(pss) // 1024:>7}{int(uss) // 1024:>7}  {name}")
    if left:
        print(f"still running after the stop: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
