"""Serving benchmark: raw runtime vs plain Ray Serve vs servekit, in one run.

    python bench/serving.py [--seconds 20] [--warmup 5] [--only raw,plain,servekit]

Workloads (the same for every server): 1-text requests on 1 connection, 1-text
requests on 16 connections, 32-text requests on 4 connections; a few short sentences
rotate. Raw throughput is measured in-process for each version with traffic in
serve_config.yaml and weighted by the split, before and after the servers; ratios use
the faster of the two. Raw batch 1 is measured once more while servekit as shipped runs
idle beside it (`single_c1_vs_raw_b1_beside_service`: the one-connection ratio on a
machine shared with the cluster, as the service's own requests are). Prints a table
and writes
bench/results/latest.json (every figure, the ratios, Ray's version and every
RAY_SERVE_* setting in force) and bench/results/latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import contextlib

from bench.loadgen import run_workload, wrk_path
from bench.raw_runtime import lanes_texts_per_second, texts_per_second

SENTENCES = [
    "red running shoes for trail and road",
    "wireless noise cancelling headphones",
    "organic green tea with jasmine flowers",
    "stainless steel water bottle 750 ml",
    "ergonomic office chair with lumbar support",
    "children's picture book about the ocean",
    "cast iron skillet pre-seasoned 12 inch",
    "waterproof hiking jacket for women",
]
WORKLOADS = [  # name, texts per request, connections
    ("single_c1", 1, 1),
    ("single_c16", 1, 16),
    ("batch32_c4", 32, 4),
]
# What a configuration run again measures (the auth pair's second half).
AGAIN = ("single_c1", "single_c16")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bodies(texts_per_request: int) -> list[bytes]:
    """Request bodies rotating the sentences."""
    out = []
    for i in range(len(SENTENCES)):
        texts = [SENTENCES[(i + k) % len(SENTENCES)] for k in range(texts_per_request)]
        payload = texts[0] if texts_per_request == 1 else texts
        out.append(orjson.dumps({"model": "minilm", "input": payload}))
    return out


def raw(seconds: float, only_b1: bool = False) -> dict[str, Any]:
    """In-process throughput of each version with traffic, and the split-weighted mix;
    `only_b1`: batch 1 alone."""
    from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = doc["applications"][0]
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    weights = {v: w for v, w in ingress["user_config"]["traffic"]["minilm"].items() if w}
    versions = app["args"]["models"]["minilm"]["versions"]
    store = ArtifactStore()
    texts = SENTENCES * 8
    per_version = {}
    for version in weights:
        spec = versions[version]["artifact"]
        runtime = load_model(
            ArtifactRef(str(ROOT / spec["uri"]), spec["sha256"]), RuntimeOptions(), store
        )
        per_version[version] = {"b1": texts_per_second(runtime, texts, 1, seconds)}
        if not only_b1:
            per_version[version]["b32"] = texts_per_second(runtime, texts, 32, seconds)
        del runtime
        if not only_b1:
            per_version[version].update(raw_lanes(versions[version], store, texts, seconds))
            figures = per_version[version]
            figures["b32_best"] = max(figures["b32"], figures["b32_two_lanes"])
    total = sum(weights.values())
    mix = {
        b: sum(per_version[v][b] * w / total for v, w in weights.items())
        for b in (("b1",) if only_b1 else ("b1", "b32", "b16", "b32_best"))
    }
    return {"weights": weights, "per_version": per_version, "mix": mix}


def raw_lanes(
    version: dict[str, Any], store: Any, texts: list[str], seconds: float
) -> dict[str, float]:
    """Batches of 16, the best sixteen single-text requests can do, with the version's
    shipped thread settings as the inline replica runs it: one batch at a time, and
    (with `busy_lanes` > 1) two one-thread batches at once; `b16` is the faster. And
    two one-thread batches of 32 at once (`b32_two_lanes`, 0 without lanes): what four
    connections of 32 texts keep running in a replica, faster than one batch of 32 on
    all threads at a time (`b32`, the goal's bound) since lanes never wait at a barrier."""
    from models import ArtifactRef, RuntimeOptions, load_model

    spec = version["artifact"]
    options = RuntimeOptions(
        intra_op_threads=int(version.get("intra_op_threads", 0)),
        spinning="during_run",
        busy_lanes=int(version.get("busy_lanes", 1)),
    )
    runtime = load_model(ArtifactRef(str(ROOT / spec["uri"]), spec["sha256"]), options, store)
    one = texts_per_second(runtime, texts, 16, seconds)
    lanes = options.busy_lanes > 1
    two = lanes_texts_per_second(runtime, texts, 16, seconds) if lanes else 0.0
    two_32 = lanes_texts_per_second(runtime, texts, 32, seconds) if lanes else 0.0
    del runtime
    return {
        "b16_one_lane": one,
        "b16_two_lanes": two,
        "b16": max(one, two),
        "b32_two_lanes": two_32,
    }


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class Server:
    """A server under test in its own process tree, with its peak memory sampled."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log: Path,
        env: dict[str, str],
        auth: str = "",
    ) -> None:
        self.name, self.port, self.peak_rss, self.auth = name, port, 0, auth
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env}
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, tree_rss_bytes(self.proc.pid))
            time.sleep(1)

    def wait_ready(self, probe: bytes, timeout_s: float = 300) -> None:
        """Until a real request succeeds."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early")
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{self.port}/v1/embeddings",
                    content=probe,
                    headers={"Content-Type": "application/json"}
                    | ({"Authorization": self.auth} if self.auth else {}),
                    timeout=10,
                )
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name} never became ready")

    def stop(self) -> None:
        """SIGTERM, then make sure the whole tree is gone."""
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=60)
        for p in _descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def measure(
    server: Server, warmup_s: float, seconds: float, only: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Every workload (or those named in `only`) against one server."""
    out = {}
    for name, texts, connections in WORKLOADS:
        if only and name not in only:
            continue
        f = run_workload(
            "127.0.0.1",
            server.port,
            "/v1/embeddings",
            bodies(texts),
            connections,
            warmup_s,
            seconds,
            server.auth,
        )
        out[name] = {
            "texts_per_s": round(f["ok"] * texts / f["seconds"], 1),
            "requests_per_s": round(f["ok"] / f["seconds"], 1),
            "errors": f["errors"],
            "error_statuses": f["statuses"],
            "p50_ms": round(f["p50_ms"], 2),
            "p99_ms": round(f["p99_ms"], 2),
        }
        print(f"  {server.name:<22}{name:<12}{out[name]}", flush=True)
    return out


def _servekit_config(tmp: Path, name: str, port: int, dedicated: bool, auth: bool = True) -> Path:
    """serve_config.yaml on a free port; with `dedicated`, the model's versions in
    deployments of their own (one replica each, the shipped thread settings and busy
    lanes, as shipped otherwise); without `auth`,
    no API keys, limits or metering."""
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["port"] = port
    if not auth:
        doc["applications"][0]["args"]["auth"] = {"enabled": False}
    if dedicated:
        app = doc["applications"][0]
        app["args"]["models"]["minilm"]["placement"] = "dedicated"
        ingress = app["deployments"][0]
        batching = ingress["user_config"].pop("batching", {})
        ingress["ray_actor_options"] = {"num_cpus": 0.5}
        for version in app["args"]["models"]["minilm"]["versions"]:
            name_v = f"minilm-{version}"
            app["deployments"].append(
                {
                    "name": name_v,
                    # The inline version's batch bounds.
                    "user_config": {
                        k: v
                        for k, v in batching.get(name_v, {}).items()
                        if k in ("max_batch_size", "max_batch_texts")
                    },
                    "max_ongoing_requests": 256,
                    "ray_actor_options": {"num_cpus": 1},
                }
            )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


DEFAULT_PROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def servers(tmp: Path) -> dict[str, tuple[list[str], int, dict[str, str]]]:
    """How to start each configuration: argv, port, extra environment."""
    py = sys.executable
    out: dict[str, tuple[list[str], int, dict[str, str]]] = {}
    port = free_port()
    out["plain-ray-serve"] = ([py, "bench/plain_serve.py", "--port", str(port)], port, {})
    port = free_port()
    out["fastapi-no-ray"] = ([py, "bench/fastapi_app.py", "--port", str(port)], port, {})
    for name, dedicated, env in (
        ("servekit", False, {}),  # serve_config.yaml and `servekit serve` as shipped
        ("servekit-auth-off", False, {}),
        ("servekit-dedicated", True, {}),
        ("servekit-python-proxy", False, DEFAULT_PROXY),
    ):
        port = free_port()
        config = _servekit_config(tmp, name, port, dedicated, name != "servekit-auth-off")
        argv = [py, "-m", "servekit", "serve", str(config), "--metrics-port", str(free_port())]
        out[name] = (argv, port, env)
    return out


def bench_credentials(tmp: Path) -> tuple[dict[str, str], str]:
    """Secrets and a registry for the servekit configurations, and a key of a tenant
    whose limits are set (high enough never to refuse) so that every request goes
    through the limiter, as a limited tenant's would."""
    import secrets
    from datetime import UTC, datetime

    from stores.registry_sql import open_registry
    from stores.tenants import SCOPES, RateLimits, issue_key

    env = {
        "SERVEKIT_HMAC_SECRET": secrets.token_urlsafe(32),
        "SERVEKIT_ADMIN_TOKEN": secrets.token_urlsafe(32),
        "SERVEKIT_REGISTRY_DSN": f"sqlite:///{tmp / 'registry.db'}",
    }
    registry = open_registry(env["SERVEKIT_REGISTRY_DSN"])
    try:
        limits = RateLimits(requests_per_s=1e6, texts_per_s=1e7, monthly_texts=10**12)
        registry.create_tenant("Benchmark", limits, "bench")
        key, _ = issue_key(
            registry,
            env["SERVEKIT_HMAC_SECRET"].encode(),
            "bench",
            name="bench",
            scopes=frozenset(SCOPES),
            now=datetime.now(UTC),
        )
    finally:
        registry.close()
    return env, key


def serve_env_in_force(name: str, extra: dict[str, str]) -> dict[str, str]:
    """The RAY_SERVE_* settings a configuration ran with: this environment, servekit's
    own defaults (which `servekit serve` applies unless set) and the configuration's."""
    from configs.settings import SERVE_ENV

    env = dict(os.environ)
    if name.startswith("servekit"):
        env = {**SERVE_ENV, **env}
    env.update(extra)
    return {k: v for k, v in sorted(env.items()) if k.startswith("RAY_SERVE_")}


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and p50 per configuration and workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["servers"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [k + i * width for k in range(len(WORKLOADS))]
        figures = results["servers"][name]["workloads"]
        axes[0].bar(xs, [figures[w]["texts_per_s"] for w, _, _ in WORKLOADS], width, label=name)
        axes[1].bar(xs, [figures[w]["p50_ms"] for w, _, _ in WORKLOADS], width, label=name)
    for ax, title in zip(axes, ("throughput (texts/s)", "p50 latency (ms)"), strict=True):
        ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(WORKLOADS))])
        ax.set_xticklabels([w for w, _, _ in WORKLOADS])
        ax.set_title(title)
    raw_mix = results["raw"]["mix"]
    axes[0].axhline(raw_mix["b1"], color="grey", linestyle="--", label="raw batch 1")
    axes[0].axhline(raw_mix["b32"], color="black", linestyle=":", label="raw batch 32")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    """Run every configuration and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--only",
        default="fastapi-no-ray,plain-ray-serve,servekit,servekit-auth-off,servekit-dedicated,"
        "servekit-python-proxy,servekit-auth-off,servekit",
        help="comma-separated configurations, run in this order (raw is always measured); "
        "a configuration named again runs again, its 1-text workloads only (the auth pair: "
        "on, off, ..., off, on)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    import ray

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "ray_version": ray.__version__,
        # What the shipped config ran with; each configuration's own is under servers.
        "ray_serve_env": serve_env_in_force("servekit", {}),
        "load_generator": "wrk" if wrk_path() else "asyncio (bench/loadgen.py)",
        "warmup_s": args.warmup,
        "measure_s": args.seconds,
        "servers": {},
    }
    # Raw is measured before and after the servers; the ratios use the faster of the two
    # for each batch size, so a slow phase of the machine never flatters them.
    print("raw (in-process), before the servers", flush=True)
    raw_runs = [raw(min(args.seconds, 10.0))]
    print(f"  {raw_runs[0]}", flush=True)
    beside: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        auth_env, key = bench_credentials(Path(tmp))
        configured = servers(Path(tmp))
        for name in [n for n in args.only.split(",") if n in configured]:  # in the order given
            again = name in results["servers"]
            argv, port, env = configured[name]
            keyed = name.startswith("servekit") and name != "servekit-auth-off"
            server = Server(
                name,
                argv,
                port,
                Path(tmp) / f"{name}.log",
                {**env, **auth_env},
                f"Bearer {key}" if keyed else "",
            )
            try:
                server.wait_ready(bodies(1)[0])
                if name == "servekit" and not again:
                    # Raw batch 1 again while the service runs idle beside it (Ray's
                    # processes and their timers): how much of the one-connection gap is
                    # the machine shared with the cluster rather than the request path.
                    beside = raw(min(args.seconds, 5.0), only_b1=True)
                    print(f"  raw beside the idle service: {beside}", flush=True)
                figures = measure(server, args.warmup, args.seconds, AGAIN if again else ())
            finally:
                server.stop()
            if again:  # the same configuration later in the run, beside its first figures
                entry = results["servers"][name]
                entry.setdefault("again", []).append(figures)
                entry["peak_rss_mb"] = max(entry["peak_rss_mb"], round(server.peak_rss / 2**20))
                continue
            results["servers"][name] = {
                "workloads": figures,
                "peak_rss_mb": round(server.peak_rss / 2**20),
                "ray_serve_env": serve_env_in_force(name, env),
            }
    print("raw (in-process), after the servers", flush=True)
    raw_runs.append(raw(min(args.seconds, 10.0)))
    print(f"  {raw_runs[1]}", flush=True)
    results["raw"] = {
        "weights": raw_runs[0]["weights"],
        "runs": raw_runs,  # each with its per-version figures and mix
        "mix": {
            b: max(run["mix"][b] for run in raw_runs) for b in ("b1", "b32", "b16", "b32_best")
        },
    }
    mix = results["raw"]["mix"]
    sk = results["servers"].get("servekit", {}).get("workloads")
    if sk:
        # The default config as shipped (serve_config.yaml, `make serve`).
        results["ratios"] = {
            "single_c1_vs_raw_b1": round(sk["single_c1"]["texts_per_s"] / mix["b1"], 3),
            "single_c16_vs_raw_b1": round(sk["single_c16"]["texts_per_s"] / mix["b1"], 3),
            "batch32_c4_vs_raw_b32": round(sk["batch32_c4"]["texts_per_s"] / mix["b32"], 3),
            "single_c16_vs_raw_b16": round(sk["single_c16"]["texts_per_s"] / mix["b16"], 3),
            # against the faster of one batch of 32 on all threads and two on lanes
            "batch32_c4_vs_raw_b32_best": round(
                sk["batch32_c4"]["texts_per_s"] / mix["b32_best"], 3
            ),
        }
        if beside is not None:
            results["raw"]["b1_beside_idle_service"] = beside
            results["ratios"]["single_c1_vs_raw_b1_beside_service"] = round(
                sk["single_c1"]["texts_per_s"] / beside["mix"]["b1"], 3
            )
        results["ratios"].update(auth_ratios(results["servers"]))
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def auth_ratios(servers: dict[str, Any]) -> dict[str, float]:
    """What auth, limits and metering cost, in the same run: the shipped config's 1-text
    throughput against the same build with auth off, over every run of each (run as on,
    off, ..., off, on, a drift of the machine during the run weighs on both alike)."""
    on, off = servers.get("servekit"), servers.get("servekit-auth-off")
    if not on or not off:
        return {}

    def total(entry: dict[str, Any], workload: str) -> float:
        runs = [entry["workloads"], *entry.get("again", [])]
        return sum(run[workload]["texts_per_s"] for run in runs if workload in run)

    return {
        f"auth_on_vs_off_{w.split('_')[1]}": round(total(on, w) / total(off, w), 3)
        for w in AGAIN
        if total(off, w) > 0
    }


def print_table(results: dict[str, Any]) -> None:
    """The figures as a table, ratios to raw included."""
    mix = results["raw"]["mix"]
    print(
        f"\nraw mix: batch 1 {mix['b1']:.0f} texts/s, batch 16 {mix['b16']:.0f} texts/s, "
        f"batch 32 {mix['b32']:.0f} texts/s (two lanes of 32 at once: {mix['b32_best']:.0f})"
    )
    print(
        f"{'server':<27}{'workload':<12}{'texts/s':>9}{'vs raw':>8}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'errors':>7}{'peak MB':>9}"
    )
    for name, entry in results["servers"].items():
        for label, run in [(name, entry["workloads"])] + [
            (f"{name} again", again) for again in entry.get("again", [])
        ]:
            for w, texts, _ in WORKLOADS:
                if w not in run:
                    continue
                f = run[w]
                base = mix["b1"] if texts == 1 else mix["b32"]
                print(
                    f"{label:<27}{w:<12}{f['texts_per_s']:>9.0f}{f['texts_per_s'] / base:>8.2f}"
                    f"{f['p50_ms']:>8.1f}{f['p99_ms']:>8.1f}{f['errors']:>7}"
                    f"{entry['peak_rss_mb']:>9}"
                )
    if "ratios" in results:
        print(f"ratios: {results['ratios']}")


if __name__ == "__main__":
    sys.exit(main())
