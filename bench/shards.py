"""Sharded search benchmark: `/v1/search` over a catalog in the Ingress, and split over two
catalog shards called through Serve's handles or directly, in one run.

    python bench/shards.py [--items 5000] [--seconds 12] [--warmup 3] [--rounds 1]

Each configuration is servekit as shipped (`servekit serve`, auth on) but for the
recommender (recommendations keep to one index, so a sharded config leaves it out, and
so does the one-index config here) and the embedding cache (off: every query is
embedded, as each is distinct): `search.shards: 1`, then `search.shards: 2` with
`args.dedicated_calls: handle`, then with `direct`, all on one store (the first loads
`--items` products of the example catalog). Distinct hybrid queries at one and 16
connections. `--rounds 2` runs the two sharded configurations again, in the other order;
`--only handle|direct` the one index and that way alone. For the sharded ones, the
fan-out rounds a search took, from `servekit_search_shard_rounds_total`: the shards'
statistics asked for (a query term not searched before) and rounds answered stale, per
search. Writes bench/results/shards.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.search import (
    METRICS_SETTLE_S,
    catalog_items,
    load_catalog,
    search_bodies,
    wait_searchable,
    workload,
)
from bench.serving import Server, bench_credentials, free_port


def config(tmp: Path, port: int, shards: int, calls: str) -> Path:
    """serve_config.yaml on a free port, without the recommender, the cache off,
    `shards` catalog shards called by `calls`."""
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["port"] = port
    app = doc["applications"][0]
    args = app["args"]
    args["models"].pop("recommender")
    args.setdefault("search", {})["shards"] = shards
    args["dedicated_calls"] = calls
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    live = ingress["user_config"]
    live["traffic"].pop("recommender")
    live.get("batching", {}).pop("recommender-v1", None)
    live.setdefault("cache", {})["enabled"] = False
    path = tmp / f"shards-{shards}-{calls}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start(
    tmp: Path, name: str, shards: int, calls: str, env: dict[str, str], key: str
) -> tuple[Server, int]:
    """servekit on a config of its own; the server and its metrics port."""
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-m", "servekit", "serve", str(config(tmp, port, shards, calls)),
            "--metrics-port", str(metrics_port)]  # fmt: skip
    server = Server(name, argv, port, tmp / f"{name}.log", env, f"Bearer {key}")
    server.wait_ready(orjson.dumps({"model": "minilm", "input": "ready?"}))
    return server, metrics_port


def shard_rounds(metrics_url: str) -> dict[str, float]:
    """Fan-out rounds of sharded searches so far, by round, over every replica that
    exports at `metrics_url` (a node's metrics export)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{metrics_url}/metrics", timeout=10).text
    out = {"stats": 0.0, "candidates": 0.0, "stale": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "ray_servekit_search_shard_rounds":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("round") in out:
                    out[sample.labels["round"]] += sample.value
    return out


def per_search(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Statistics rounds and stale rounds per search between two counts (a search makes
    one candidates round, and one more for each answered stale)."""
    delta = {k: after[k] - before[k] for k in after}
    searches = delta["candidates"] - delta["stale"]
    if searches <= 0:
        return {}
    return {
        "stats_rounds_per_search": round(delta["stats"] / searches, 3),
        "stale_rounds_per_search": round(delta["stale"] / searches, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1, choices=(1, 2))
    parser.add_argument(
        "--only", choices=("handle", "direct"), help="one index, then this way only"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shards.json")
    args = parser.parse_args()
    items, queries = catalog_items(args.items)
    half = len(queries) // 2
    pools = {"c1": (1, search_bodies(queries[:half])), "c16": (16, search_bodies(queries[half:]))}
    runs: list[dict[str, Any]] = []
    order = [("one index", 1, "direct"), ("2 shards, handle", 2, "handle"),
             ("2 shards, direct", 2, "direct")]  # fmt: skip
    if args.rounds == 2:
        order += [("2 shards, direct", 2, "direct"), ("2 shards, handle", 2, "handle")]
    if args.only:
        order = [run for run in order if run[1] == 1 or run[2] == args.only]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env, key = bench_credentials(tmp)
        for n, (label, shards, calls) in enumerate(order):
            server, metrics_port = start(tmp, f"shards-{n}", shards, calls, env, key)
            try:
                if n == 0:
                    load_catalog(server.port, key, items)
                wait_searchable(server.port, key)
                run: dict[str, Any] = {"configuration": label}
                metrics_url = f"http://127.0.0.1:{metrics_port}"
                if shards > 1:  # each reading after the exports settle; one workload's
                    time.sleep(METRICS_SETTLE_S)  # last is the next one's first
                    before = shard_rounds(metrics_url)
                for name, (connections, bodies) in pools.items():
                    run[name] = workload(
                        server.port, key, bodies, connections, args.warmup, args.seconds
                    )
                    if shards > 1:
                        time.sleep(METRICS_SETTLE_S)
                        after = shard_rounds(metrics_url)
                        run[name].update(per_search(before, after))
                        before = after
                print(f"{label}: {run}", flush=True)
                runs.append(run)
            finally:
                server.stop()
    print()
    print(
        "| configuration | c1 searches/s | c1 p50 / p99 ms | c16 searches/s | c16 p50 / p99 ms"
        " | statistics rounds per search c1 / c16 |"
    )
    print("|---|---|---|---|---|---|")
    for run in runs:
        cells = [
            f"{w['requests_per_s']} | {w['p50_ms']} / {w['p99_ms']}"
            for w in (run["c1"], run["c16"])
        ]
        stats = " / ".join(str(run[w].get("stats_rounds_per_search", "-")) for w in ("c1", "c16"))
        print(f"| {run['configuration']} | {' | '.join(cells)} | {stats} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"items": len(items), "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
