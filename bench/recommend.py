"""Recommendations benchmark: `/v1/recommendations` through servekit against a single-text
`/v1/embeddings` call and against an in-process loop doing the same steps, in one run.

    python bench/recommend.py [--items 5000] [--users 400] [--seconds 15] [--warmup 3]

servekit runs as shipped (`servekit serve`, serve_config.yaml, auth on, the embedded
feature store) with `--items` products of the example catalog and `--users` users whose
events (the example interactions over those items) went through `POST /v1/events`.
The service's replica answers recommendations arriving together through its
recommendation workers (`deployments/pipelines/recommend_process.py`, as many as
`recommendations.worker_processes`), one caller at a time on its own loop. Measured: at
one connection, the p50 of a recommendation against the p50 of a single-text embedding
(goal: at most 2x); at 16 connections, recommendations per second against a loop in
this process running the same steps on the same stores, one request after another
(features, user tower, candidates from the version's index, ranking; goal:
at least 0.8x). Writes bench/results/recommend.json and adds the ratios to latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import run_workload, wrk_path
from bench.search import CATALOG, UPSERT_PAGE, catalog_items, config, merge_into
from bench.serving import Server, bench_credentials, free_port

EVENT_PAGE = 1000
K = 10


def start(tmp: Path, env: dict[str, str], key: str) -> Server:
    """servekit as shipped, on free ports."""
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-m", "servekit", "serve", str(config(tmp, port, True)),
            "--metrics-port", str(metrics_port)]  # fmt: skip
    server = Server("servekit-recommend", argv, port, tmp / "recommend.log", env, f"Bearer {key}")
    server.wait_ready(orjson.dumps({"model": "minilm", "input": "ready?"}))
    return server


def load(port: int, key: str, items: list[dict[str, Any]], users: int) -> list[str]:
    """Upsert the items and post the example interactions of `users` users over them;
    the users who have events."""
    from models.example_interactions import generate
    from stores.catalog import Item

    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300, headers=headers) as c:
        for at in range(0, len(items), UPSERT_PAGE):
            r = c.put(f"/v1/catalogs/{CATALOG}/items", json={"items": items[at : at + UPSERT_PAGE]})
            r.raise_for_status()
        log = generate([Item(i["id"], i["text"], i["attributes"]) for i in items], users, 0)
        now = time.time()
        shift = now - max(e.timestamp for e in log) - 60  # the log ends a minute ago
        events = [{"user": e.user, "item": e.item, "type": e.type,
                   "timestamp": e.timestamp + shift} for e in log]  # fmt: skip
        for at in range(0, len(events), EVENT_PAGE):
            body = {"catalog": CATALOG, "events": events[at : at + EVENT_PAGE]}
            c.post("/v1/events", json=body).raise_for_status()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until the recommender's index is complete
            r = c.post("/v1/recommendations", json={"user": log[0].user, "catalog": CATALOG})
            if r.status_code == 200 and r.json()["source"] == "model":
                break
            time.sleep(1)
    print(f"{len(items)} items and {len(events)} events of {users} users loaded", flush=True)
    return sorted({e.user for e in log})


def worker_pids(root: int) -> list[int]:
    """The service's recommendation worker processes (none: not running)."""
    from bench.serving import _descendants

    out = []
    for pid in _descendants(root):
        try:
            if (
                b"deployments.pipelines.recommend_process"
                in Path(f"/proc/{pid}/cmdline").read_bytes()
            ):
                out.append(pid)
        except OSError:
            continue
    return out


def worker_rss_mb(root: int) -> list[int]:
    """Resident memory of each of the service's recommendation workers."""
    out = []
    for pid in worker_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(round(int(line.split()[1]) / 1024))
        except OSError:
            continue
    return out


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds the processes have used (-1: one of them is gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            return -1.0
    return total


def settle_worker(root: int, port: int, key: str, recs: list[bytes]) -> float:
    """Start the replica's recommendation workers (requests at once start them) and wait
    until they have caught up with the catalog store (their CPU quiet for a second), so
    that no measurement runs beside their start; the seconds that took."""
    started = time.monotonic()
    workload(port, key, "/v1/recommendations", recs, 16, 0, 2)
    last = -1.0
    while time.monotonic() - started < 180:
        pids = worker_pids(root)
        if not pids and time.monotonic() - started > 30:
            break  # no worker (`recommendations.worker_process: false`)
        cpu = _cpu_s(pids)
        if pids and 0 <= cpu - last < 0.05 * len(pids):
            break
        last = cpu
        time.sleep(1)
    return round(time.monotonic() - started, 1)


def workload(port: int, key: str, path: str, bodies: list[bytes], connections: int,
             warmup: float, seconds: float) -> dict[str, Any]:  # fmt: skip
    """One load run."""
    f = run_workload("127.0.0.1", port, path, bodies, connections, warmup, seconds,
                     f"Bearer {key}")  # fmt: skip
    return {"requests_per_s": round(f["ok"] / f["seconds"], 1), "errors": f["errors"],
            "error_statuses": f["statuses"], "p50_ms": round(f["p50_ms"], 2),
            "p99_ms": round(f["p99_ms"], 2)}  # fmt: skip


def in_process(env: dict[str, str], users: list[str], seconds: float) -> dict[str, Any]:
    """The same steps without serving, one request after another, on the same stores:
    the replica's own `RecommendService` over a `SearchService` that loaded the catalog
    and the vectors servekit stored."""
    import logging

    import yaml

    from configs.features import load_definitions
    from configs.schema import AppArgs
    from deployments.pipelines.features import FeatureService
    from deployments.pipelines.features_wiring import catalog_items as lookup_of
    from deployments.pipelines.features_wiring import embedded_path
    from deployments.pipelines.recommend import PopularItems, RecommendQuery, RecommendService
    from deployments.pipelines.search import SearchService
    from deployments.pipelines.wiring import space_artifacts
    from models import ArtifactRef, ArtifactStore
    from models.recommender import Recommender
    from stores.catalog_sql import open_catalog_store
    from stores.events_sql import open_event_log
    from stores.features_sqlite import SqliteFeatureStore

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = AppArgs.model_validate(doc["applications"][0]["args"])
    model = args.recommender()
    assert model is not None
    version = next(iter(args.models[model].versions))
    spec = args.models[model].versions[version]
    package = ArtifactStore().resolve(ArtifactRef(str(ROOT / spec.artifact.uri),
                                                  spec.artifact.sha256))  # fmt: skip
    log = logging.getLogger("bench")
    dsn = env["SERVEKIT_REGISTRY_DSN"]

    async def run() -> dict[str, Any]:
        async def no_text(tenant: str, space: str, texts: list[str]) -> Any:
            raise AssertionError("the loop searches no text")

        catalogs = open_catalog_store(dsn)
        search = SearchService(
            catalogs, no_text, 1.0, log, backfill_delay_s=3600,
            space_artifacts=space_artifacts(args),  # the vectors servekit stored
        )  # fmt: skip
        events = open_event_log(dsn)
        store = SqliteFeatureStore(embedded_path(dsn))
        features = FeatureService(load_definitions(None), store, events, lookup_of(search), log)
        service = RecommendService(model, {version: Recommender(package.path)}, search, features,
                                   PopularItems(events, args.recommendations, log),
                                   args.recommendations)  # fmt: skip
        search.item_model = (model, service.item_vectors)
        await search.start([f"{model}/{version}"])
        rng = random.Random(5)
        latencies: list[float] = []
        # model or popular answers (users whose history is past the features' TTL are
        # cold): a loop that found no item vectors would answer popular items only, far
        # cheaper, and flatter the ratio; the share is reported beside the figures.
        sources: dict[str, int] = {}
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            q = RecommendQuery("bench", CATALOG, rng.choice(users), version, K, None, True)
            t0 = time.perf_counter()
            got = await service.recommend(q)
            latencies.append(time.perf_counter() - t0)
            sources[got.source] = sources.get(got.source, 0) + 1
        took = time.perf_counter() - started
        await search.close()
        ordered = sorted(latencies)
        model_share = round(sources.get("model", 0) / max(1, len(ordered)), 3)
        return {"requests_per_s": round(len(ordered) / took, 1),
                "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
                "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 2),
                "model_share": model_share}  # fmt: skip

    return asyncio.run(run())


def main() -> int:
    """Load, measure the service, then the loop; write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recommend.json")
    args = parser.parse_args()
    items, _ = catalog_items(args.items)
    results: dict[str, Any] = {
        "items": len(items), "users": args.users, "measure_s": args.seconds,
        "load_generator": "wrk" if wrk_path() else "asyncio (bench/loadgen.py)",
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env, key = bench_credentials(tmp)
        server = start(tmp, env, key)
        try:
            users = load(server.port, key, items, args.users)
            rng = random.Random(9)
            recs = [orjson.dumps({"user": rng.choice(users), "catalog": CATALOG, "k": K})
                    for _ in range(2000)]  # fmt: skip
            waited = settle_worker(server.proc.pid, server.port, key, recs)
            print(f"  recommendation workers up and caught up after {waited} s", flush=True)
            texts = [orjson.dumps({"model": "minilm", "input": f"{i['text']['title']}"})
                     for i in items[:2000]]  # fmt: skip
            served = {
                "embeddings_c1": workload(server.port, key, "/v1/embeddings", texts, 1,
                                          args.warmup, args.seconds),
                "recommend_c1": workload(server.port, key, "/v1/recommendations", recs, 1,
                                         args.warmup, args.seconds),
                "recommend_c16": workload(server.port, key, "/v1/recommendations", recs, 16,
                                          args.warmup, args.seconds),
            }  # fmt: skip
            for name, figures in served.items():
                print(f"  {name}: {figures}", flush=True)
            worker_mb = worker_rss_mb(server.proc.pid)
            peak_mb = round(server.peak_rss / 2**20)
            print(f"  peak memory {peak_mb} MB, of it the recommendation workers "
                  f"{' + '.join(map(str, worker_mb)) or 0} MB", flush=True)  # fmt: skip
        finally:
            server.stop()
        loop = in_process(env, users, args.seconds)
        print(f"  in-process loop: {loop}", flush=True)
    results.update(servekit=served, in_process=loop, peak_rss_mb=peak_mb,
                   worker_rss_mb=worker_mb)  # fmt: skip
    results["ratios"] = {
        "recommend_c1_p50_vs_embed_c1_p50": round(
            served["recommend_c1"]["p50_ms"] / served["embeddings_c1"]["p50_ms"], 3
        ),
        "recommend_c16_vs_loop": round(
            served["recommend_c16"]["requests_per_s"] / loop["requests_per_s"], 3
        ),
    }
    print(json.dumps(results["ratios"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    merge_into(args.out.with_name("latest.json"), results["ratios"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
