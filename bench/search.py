"""Search benchmark: `/v1/search` through servekit against an in-process loop doing the
same work, in one run; then a Zipf query stream with the embedding cache on and off.

    python bench/search.py [--items 5000] [--seconds 15] [--warmup 3]

servekit runs as shipped (`servekit serve`, serve_config.yaml, auth on) with a catalog of
`--items` products of the example catalog. The in-process loop loads the same versions,
indexes the vectors servekit stored (the same `CatalogIndex`), and for each query picks a
version by the split's weights, embeds the query with it and searches its index with
the service's defaults (k 10, hybrid, its fusion): one query at a time (against one
connection) and 16 queries as one embedding batch (against 16 connections, where the
server batches the 16 in flight). That part runs with the embedding cache off
(`cache.enabled: false`), as the loop has none. The Zipf part (exponent 1.1 over 2,000
distinct queries) runs against that server and then against the shipped config (cache
on, the same store), whose metrics give the hit rate. Writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import run_workload, wrk_path
from bench.serving import Server, bench_credentials, free_port

CATALOG = "bench"
K = 10
ZIPF_EXPONENT = 1.1
ZIPF_QUERIES = 2000  # distinct queries the Zipf stream draws from
UPSERT_PAGE = 500
METRICS_SETTLE_S = 12.0  # replicas export their metrics every few seconds


def catalog_items(n: int) -> tuple[list[dict[str, Any]], list[str]]:
    """`n` products of the example catalog as upsert bodies' items, and a pool of
    distinct queries (the labelled queries, then the titles' leading words)."""
    from models.example_catalog import generate
    from models.example_queries import make_queries

    catalog = generate(n)
    items = catalog.items
    queries = list(dict.fromkeys(q.query for q in make_queries(catalog)))
    body = [{"id": i.id, "text": i.text, "attributes": i.attributes} for i in items]
    seen = set(queries)
    for item in items:
        words = item.text["title"].split()
        for cut in (3, 4, 5):
            q = " ".join(words[:cut]).lower()
            if q not in seen:
                seen.add(q)
                queries.append(q)
    return body, queries


def search_bodies(queries: list[str]) -> list[bytes]:
    """One `/v1/search` body per query, in order."""
    return [orjson.dumps({"catalog": CATALOG, "query": q, "k": K}) for q in queries]


def zipf_stream(n_queries: int, length: int, seed: int = 7) -> list[int]:
    """`length` query ranks drawn with P(rank r) proportional to 1 / r^1.1."""
    weights = [1 / (r + 1) ** ZIPF_EXPONENT for r in range(n_queries)]
    return random.Random(seed).choices(range(n_queries), weights=weights, k=length)


def config(tmp: Path, port: int, cache: bool) -> Path:
    """serve_config.yaml on a free port, the embedding cache on (as shipped) or off."""
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["port"] = port
    if not cache:
        ingress = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")
        ingress.setdefault("user_config", {}).setdefault("cache", {})["enabled"] = False
    path = tmp / f"search-cache-{'on' if cache else 'off'}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start(tmp: Path, name: str, cache: bool, env: dict[str, str], key: str) -> tuple[Server, int]:
    """servekit on a config of its own; the server and its metrics port."""
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-m", "servekit", "serve", str(config(tmp, port, cache)),
            "--metrics-port", str(metrics_port)]  # fmt: skip
    server = Server(name, argv, port, tmp / f"{name}.log", env, f"Bearer {key}")
    probe = orjson.dumps({"model": "minilm", "input": "ready?"})
    server.wait_ready(probe)
    return server, metrics_port


def load_catalog(port: int, key: str, items: list[dict[str, Any]]) -> float:
    """Upsert the items (each embedded by every version with traffic); seconds taken."""
    started = time.monotonic()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300,
                      headers={"Authorization": f"Bearer {key}"}) as client:  # fmt: skip
        for at in range(0, len(items), UPSERT_PAGE):
            r = client.put(f"/v1/catalogs/{CATALOG}/items",
                           json={"items": items[at : at + UPSERT_PAGE]})  # fmt: skip
            r.raise_for_status()
        r = client.post("/v1/search", json={"catalog": CATALOG, "query": "shoes", "k": K})
        r.raise_for_status()
    return time.monotonic() - started


def wait_searchable(port: int, key: str, timeout_s: float = 300) -> None:
    """Until a search of the catalog answers (the replica has loaded its index)."""
    deadline = time.monotonic() + timeout_s
    body = {"catalog": CATALOG, "query": "shoes", "k": K}
    while time.monotonic() < deadline:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/search", json=body, timeout=30,
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        if r.status_code == 200 and r.json()["data"]:
            return
        time.sleep(1)
    raise RuntimeError("the catalog never became searchable")


def cache_counts(metrics_port: int) -> dict[str, float]:
    """Texts of searches looked up in the cache so far, and how many were hits (either
    tier), over every replica."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    out = {"lookups": 0.0, "hits": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != "ray_servekit_embedding_cache_lookups":
            continue
        for sample in family.samples:
            labels = sample.labels
            if not sample.name.endswith("_total") or labels.get("use") != "search":
                continue
            if labels.get("tier") == "memory":
                out["lookups"] += sample.value
            if labels.get("result") == "hit":
                out["hits"] += sample.value
    return out


def workload(
    port: int, key: str, bodies: list[bytes], connections: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """One load run against `/v1/search`."""
    f = run_workload("127.0.0.1", port, "/v1/search", bodies, connections, warmup, seconds,
                     f"Bearer {key}")  # fmt: skip
    return {
        "requests_per_s": round(f["ok"] / f["seconds"], 1),
        "errors": f["errors"],
        "error_statuses": f["statuses"],
        "p50_ms": round(f["p50_ms"], 2),
        "p99_ms": round(f["p99_ms"], 2),
    }


def in_process(registry_dsn: str, queries: list[str], batch: int, seconds: float) -> dict[str, Any]:
    """The same work without serving: per query a version by the split, its embedding,
    a search of its index; `batch` queries embedded together (grouped by version)."""
    from configs.schema import AppArgs, IngressLiveConfig
    from deployments.pipelines.catalog_index import CatalogIndex
    from deployments.pipelines.search import stored_space
    from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model
    from models.text import TextEmbedder
    from stores.catalog_sql import open_catalog_store

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app_doc = doc["applications"][0]
    args = AppArgs.model_validate(app_doc["args"])
    ingress = next(d for d in app_doc["deployments"] if d["name"] == "Ingress")
    live = IngressLiveConfig.model_validate(ingress["user_config"])
    model = args.search_model()
    weights = {v: w for v, w in live.traffic[model].items() if w > 0}
    store = open_catalog_store(registry_dsn)
    tenant = "bench"
    items = []
    after = None
    while page := store.scan(tenant, CATALOG, after, 1000):
        items.extend(page)
        after = page[-1].id
    index = CatalogIndex()
    index.upsert_many(items)
    runtimes: dict[str, TextEmbedder] = {}
    artifacts = ArtifactStore()
    for version in weights:
        space = f"{model}/{version}"
        spec = args.models[model].versions[version]
        named = stored_space(space, spec.artifact.sha256)  # as servekit stored them
        stored = store.get_vectors(tenant, CATALOG, named, [i.id for i in items])
        index.set_vectors(space, {i: np.frombuffer(b, dtype=np.float32) for i, b in stored.items()})
        ref = ArtifactRef(str(ROOT / spec.artifact.uri), spec.artifact.sha256)
        runtime = load_model(ref, RuntimeOptions(), artifacts)
        assert isinstance(runtime, TextEmbedder)
        runtimes[version] = runtime
    store.close()
    rng = random.Random(3)
    versions, shares = list(weights), list(weights.values())
    hybrid, fusion = args.search.hybrid_default, args.search.fusion
    latencies: list[float] = []
    done, n = 0, 0
    for runtime in runtimes.values():  # warm each shape
        runtime.embed(queries[:batch])
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        chunk = [queries[(n + i) % len(queries)] for i in range(batch)]
        n += batch
        by_version: dict[str, list[str]] = {}
        for q in chunk:
            by_version.setdefault(rng.choices(versions, shares)[0], []).append(q)
        for version, group in by_version.items():
            vectors = runtimes[version].embed(group)
            for q, v in zip(group, vectors, strict=True):
                index.search(f"{model}/{version}", v, q, K, None, hybrid, fusion)
        latencies.append(time.perf_counter() - t0)
        done += batch
    took = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_s": round(done / took, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
        "items": len(items),
        "weights": weights,
    }


def main() -> int:
    """Run both parts and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search.json")
    args = parser.parse_args()
    items, queries = catalog_items(args.items)
    results: dict[str, Any] = {
        "items": len(items),
        "distinct_queries": len(queries),
        "load_generator": "wrk" if wrk_path() else "asyncio (bench/loadgen.py)",
        "measure_s": args.seconds,
        "warmup_s": args.warmup,
    }
    rng = random.Random(11)
    distinct = queries[:]
    rng.shuffle(distinct)
    zipf_pool = distinct[:ZIPF_QUERIES]
    zipf = search_bodies([zipf_pool[r] for r in zipf_stream(len(zipf_pool), 20_000)])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env, key = bench_credentials(tmp)
        # The cache off first: the catalog is loaded, and distinct queries (where a
        # cache could only miss) and the Zipf stream measure the work itself.
        server, _ = start(tmp, "servekit-search-cache-off", False, env, key)
        try:
            results["upsert_s"] = round(load_catalog(server.port, key, items), 1)
            print(f"catalog of {len(items)} items loaded in {results['upsert_s']} s", flush=True)
            served: dict[str, Any] = {}
            half = len(distinct) // 2
            for name, connections, pool in (("c1", 1, distinct[:half]),
                                            ("c16", 16, distinct[half:])):  # fmt: skip
                bodies = search_bodies(pool)
                served[name] = workload(
                    server.port, key, bodies, connections, args.warmup, args.seconds
                )
                print(f"  /v1/search {name}: {served[name]}", flush=True)
            zipf_off: dict[str, Any] = {}
            for name, connections in (("c1", 1), ("c16", 16)):
                zipf_off[name] = workload(server.port, key, zipf, connections, args.warmup,
                                          args.seconds)  # fmt: skip
                print(f"  zipf, cache off, {name}: {zipf_off[name]}", flush=True)
        finally:
            server.stop()
        peak = server.peak_rss
        # As shipped (cache on), on the same store: the replica loads the catalog.
        server, metrics_port = start(tmp, "servekit-search", True, env, key)
        try:
            wait_searchable(server.port, key)
            zipf_on: dict[str, Any] = {}
            for name, connections in (("c1", 1), ("c16", 16)):
                time.sleep(METRICS_SETTLE_S)
                before = cache_counts(metrics_port)
                zipf_on[name] = workload(server.port, key, zipf, connections, args.warmup,
                                         args.seconds)  # fmt: skip
                time.sleep(METRICS_SETTLE_S)
                after = cache_counts(metrics_port)
                lookups = after["lookups"] - before["lookups"]
                zipf_on[name]["hit_rate"] = round(
                    (after["hits"] - before["hits"]) / max(1.0, lookups), 3
                )
                print(f"  zipf, cache on, {name}: {zipf_on[name]}", flush=True)
        finally:
            server.stop()
        results["servekit"] = {
            "distinct": served,
            "zipf_cache_off": zipf_off,
            "zipf_cache_on": zipf_on,
            "peak_rss_mb": round(max(peak, server.peak_rss) / 2**20),
        }
        print("in-process loop", flush=True)
        dsn = env["SERVEKIT_REGISTRY_DSN"]
        loop = {"c1": in_process(dsn, distinct, 1, args.seconds),
                "c16": in_process(dsn, distinct, 16, args.seconds)}  # fmt: skip
        print(f"  {loop}", flush=True)
    results["in_process"] = loop
    results["ratios"] = {
        "search_c16_vs_loop_c16": round(
            served["c16"]["requests_per_s"] / loop["c16"]["requests_per_s"], 3
        ),
        "search_c1_vs_loop_c1": round(
            served["c1"]["requests_per_s"] / loop["c1"]["requests_per_s"], 3
        ),
        "search_c1_p50_minus_loop_ms": round(served["c1"]["p50_ms"] - loop["c1"]["p50_ms"], 2),
        "zipf_c16_cache_on_vs_off": round(
            zipf_on["c16"]["requests_per_s"] / zipf_off["c16"]["requests_per_s"], 3
        ),
        "zipf_c1_cache_on_vs_off": round(
            zipf_on["c1"]["requests_per_s"] / zipf_off["c1"]["requests_per_s"], 3
        ),
    }
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    merge_into(args.out.with_name("latest.json"), results["ratios"])
    return 0


def merge_into(latest: Path, ratios: dict[str, float]) -> None:
    """Add the search ratios to the serving benchmark's `ratios` (`make bench` runs it
    just before), so one file shows the whole platform against its limits."""
    if not latest.is_file():
        return
    doc = json.loads(latest.read_text())
    doc.setdefault("ratios", {}).update(ratios)
    latest.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"added the search ratios to {latest}")


def print_table(results: dict[str, Any]) -> None:
    """The figures as a table."""
    print(f"\n{'what':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'hit rate':>10}")
    rows = [
        ("in-process loop, 1 at a time", results["in_process"]["c1"]),
        ("in-process loop, batches of 16", results["in_process"]["c16"]),
    ]
    sk = results["servekit"]
    for name in ("c1", "c16"):
        rows.append((f"/v1/search {name}, distinct", sk["distinct"][name]))
    for name in ("c1", "c16"):
        rows.append((f"/v1/search {name}, zipf, cache on", sk["zipf_cache_on"][name]))
        rows.append((f"/v1/search {name}, zipf, cache off", sk["zipf_cache_off"][name]))
    for label, f in rows:
        hit = f.get("hit_rate")
        print(
            f"{label:<34}{f['requests_per_s']:>9.0f}{f['p50_ms']:>9.2f}{f['p99_ms']:>9.2f}"
            f"{f.get('errors', 0):>8}{'' if hit is None else f'{hit:.2f}':>10}"
        )
    print(f"ratios: {results['ratios']}")


if __name__ == "__main__":
    sys.exit(main())
