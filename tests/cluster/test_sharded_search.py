"""A catalog split over two shard deployments on two Ray nodes answers as one index.

Two applications on one two-node cluster share the store: `one` holds the catalog in
its ingress (`search.shards: 1`), `two` splits it over `CatalogShard-0` (head node) and
`CatalogShard-1` (worker node). Items written through `one` reach `two`'s shards from
the change log; every search (vector, hybrid, filtered) answers the same items in the
same order with the same scores from both, and `two`'s Ingress calls its shards
directly (`args.dedicated_calls: direct`, the default).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.shards import shard_rounds
from tests.cluster_util import RayNode, cluster_env, serve_deploy, serve_details
from tests.conftest import REPO_ROOT, auth_headers, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WORDS = (
    "trail road running hiking shoes boots socks wool rain down jacket tent stove kettle "
    "lamp waterproof light warm breathable grip cushioned packable insulated durable"
).split()
BRANDS = ["Acme", "Globex", "Initech", "Umbrella"]


def _app(base: dict[str, Any], name: str, shards: int) -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base))
    app["name"], app["route_prefix"] = name, f"/{name}"
    minilm = app["args"]["models"]["minilm"]
    minilm["versions"] = {"v1": minilm["versions"]["v1"]}  # one version: half the memory
    app["args"]["search"] = {"shards": shards, "max_k": 300}
    app["args"]["models"].pop("recommender")  # recommendations keep to one index
    on_head = {"num_cpus": 0.5, "resources": {"servekit_head": 0.01}}
    deployments = []
    for entry in app["deployments"]:
        if entry["name"] == "Ingress":
            entry.pop("autoscaling_config", None)
            entry["num_replicas"] = 1
            entry["ray_actor_options"] = on_head
            live = entry["user_config"]
            live["traffic"]["minilm"] = {"v1": 100}
            live["traffic"].pop("recommender")
            live.get("batching", {}).pop("minilm-v2", None)
            live.pop("shadow", None)
            live.pop("rollout", None)
            deployments.append(entry)
    for n in range(shards if shards > 1 else 0):
        node = "servekit_head" if n == 0 else "servekit_worker"
        deployments.append(
            {"name": f"CatalogShard-{n}", "num_replicas": 1,
             "ray_actor_options": {"num_cpus": 0.5, "resources": {node: 0.01}}}
        )  # fmt: skip
    app["deployments"] = deployments
    return app


def _config(port: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    doc["proxy_location"] = "HeadOnly"  # both nodes share one machine, hence one port
    doc["http_options"]["port"] = port
    base = doc["applications"][0]
    doc["applications"] = [_app(base, "one", 1), _app(base, "two", 2)]
    return doc


def _items(n: int) -> list[dict[str, Any]]:
    rng = random.Random(11)
    return [
        {
            "id": f"item-{i}",
            "text": {
                "title": f"{rng.choice(BRANDS)} {' '.join(rng.sample(WORDS, 3))}",
                "description": " ".join(rng.choices(WORDS, k=rng.randint(6, 30))),
                "sku": f"SKU-{i:05d}",
            },
            "attributes": {"brand": rng.choice(BRANDS), "price": rng.randint(10, 300)},
        }
        for i in range(n)
    ]


def _shard_rounds(head: RayNode, done: Any, timeout_s: float = 60) -> dict[str, float]:
    """`ray_servekit_search_shard_rounds_total` by round from the head node's metrics
    export, scraped until `done(rounds)` (replicas export every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rounds = shard_rounds(f"http://127.0.0.1:{head.metrics_port}")
        if done(rounds) or time.monotonic() > deadline:
            return rounds
        time.sleep(1)


def _shard_nodes(head: RayNode) -> dict[str, str]:
    """Each running shard replica's node id, by deployment."""
    apps: Any = serve_details(head).get("applications") or {}
    found = {}
    for name, deployment in (apps.get("two", {}).get("deployments") or {}).items():
        for replica in deployment.get("replicas") or []:
            if replica.get("state") == "RUNNING" and name.startswith("CatalogShard"):
                found[name] = replica["node_id"]
    return found


def _direct_answered(head: RayNode) -> dict[str, dict[str, int]]:
    """Direct calls each shard replica of `two` has answered, by method (a driver on
    the cluster asks each through its handle)."""
    code = (
        "import json, ray\n"
        "from ray import serve\n"
        f"ray.init(address={head.gcs_address!r}, logging_level='ERROR')\n"
        "names = ('CatalogShard-0', 'CatalogShard-1')\n"
        "print(json.dumps({n: serve.get_deployment_handle(n, app_name='two')"
        ".direct_stats.remote().result()['answered'] for n in names}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=cluster_env(), capture_output=True, text=True,
        timeout=120, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answered: dict[str, dict[str, int]] = json.loads(done.stdout.strip().splitlines()[-1])
    return answered


def _search(base: str, app: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/{app}/v1/search", json=body, headers=auth_headers(), timeout=30)


def test_two_shards_on_two_nodes_answer_as_one_index(
    nodes: tuple[RayNode, RayNode], tmp_path: Path, example_store: Path, report: list[str]
) -> None:
    head, _ = nodes
    port = free_port()
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(_config(port), sort_keys=False))
    serve_deploy(config, head)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            ready = [httpx.get(f"{base}/{a}/v2/health/ready", timeout=5) for a in ("one", "two")]
            if all(r.status_code == 200 for r in ready) and len(_shard_nodes(head)) == 2:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    shard_nodes = _shard_nodes(head)
    assert len(set(shard_nodes.values())) == 2, f"shards not on two nodes: {shard_nodes}"

    catalog = f"sharded-{uuid.uuid4().hex[:8]}"
    items = _items(300)
    for start in range(0, len(items), 100):
        r = httpx.put(
            f"{base}/one/v1/catalogs/{catalog}/items",
            json={"items": items[start : start + 100]},
            headers=auth_headers(),
            timeout=60,
        )
        assert r.status_code == 200, r.text
    written = time.monotonic()
    probe = {"catalog": catalog, "query": "warm waterproof boots", "k": 300, "hybrid": False}
    while time.monotonic() - written < 30:
        r = _search(base, "two", probe)
        if r.status_code == 200 and len(r.json()["data"]) == len(items):
            break
        time.sleep(0.2)
    visible_s = time.monotonic() - written
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == len(items)

    bodies = [
        {"query": q, "k": 10, "hybrid": h, **({"filters": f} if f else {})}
        for q in ("warm waterproof boots", "Globex trail running shoes", "SKU-00042 kettle")
        for h in (False, True)
        for f in (None, {"price": {"lte": 120}}, {"brand": "Acme"})
    ]
    for body in bodies:
        one = _search(base, "one", {"catalog": catalog, **body})
        two = _search(base, "two", {"catalog": catalog, **body})
        assert one.status_code == two.status_code == 200, (one.text, two.text)
        a, b = one.json()["data"], two.json()["data"]
        assert [h["id"] for h in a] == [h["id"] for h in b], body
        assert [h["score"] for h in b] == pytest.approx([h["score"] for h in a], abs=1e-5), body
    p50 = {}
    for app in ("one", "two"):
        took = []
        with httpx.Client(base_url=base, headers=auth_headers(), timeout=30) as client:
            for n in range(40):  # on one kept connection: the searches, not the set-up
                body = {"catalog": catalog, **bodies[n % len(bodies)]}
                started = time.perf_counter()
                assert client.post(f"/{app}/v1/search", json=body).status_code == 200
                took.append(time.perf_counter() - started)
        p50[app] = sorted(took)[len(took) // 2] * 1000
    # Every search of `two` reached each shard directly, none through Serve's handles;
    # the BM25 statistics of each of the three queries were asked for once, then kept.
    answered = _direct_answered(head)
    hybrid = sum(b["hybrid"] for b in bodies) + sum(
        bodies[n % len(bodies)]["hybrid"] for n in range(40)
    )
    for shard in answered.values():
        assert shard.get("candidates", 0) >= len(bodies) + 40, answered
        assert 3 <= shard.get("term_stats_at", 0) < hybrid, answered
        assert shard.get("sync", 0) > 0, answered
    # The rounds, as an SRE's scrape of the head node sees them.
    rounds = _shard_rounds(head, lambda r: r.get("candidates", 0) >= len(bodies) + 40)
    assert 3 <= rounds.get("stats", 0) < hybrid, rounds
    assert rounds.get("stale", 0) == 0, rounds  # no write after the items were in
    report.append(
        f"sharded search: p50 {p50['one']:.1f} ms in one index, {p50['two']:.1f} ms over two "
        f"shards (one request at a time on a kept connection, both nodes on this 2-core machine)"
    )
    report.append(
        f"sharded search: 300 items over 2 shards on 2 nodes, {len(bodies)} searches "
        f"(vector, hybrid, filtered) equal to one index's; the last shard had the items "
        f"{visible_s:.2f} s after the upsert"
    )
