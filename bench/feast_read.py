"""Feast's online read of one user's 20 features against a local redis-server, as a
caller of `FeatureStore.get_online_features` sees it: the figures behind the README's
decision not to use Feast (see "Features and events").

Feast is not a dependency of servekit; this runs in a scratch environment:

    python3.11 -m venv /tmp/feastvenv
    /tmp/feastvenv/bin/pip install "feast[redis]==0.67.*" "ray[serve]==2.60.0" "fastapi<0.137"
    redis-server --port 6390 --save '' --appendonly no &
    /tmp/feastvenv/bin/python bench/feast_read.py --redis localhost:6390

It prints one JSON object: import time and memory of `feast`, the read's p50/p99 over
`--reads` calls, one row's `write_to_online_store` (what an event would cost), and the
same read straight from redis-py (what the store itself costs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

N_FEATURES = 20


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default="localhost:6379", help="host:port")
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()

    rss_before = _rss_mib()
    started = time.perf_counter()
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float32, Int64

    import_s = time.perf_counter() - started
    rss_import = _rss_mib()

    repo = Path(tempfile.mkdtemp(prefix="feastrepo-"))
    (repo / "feature_store.yaml").write_text(
        textwrap.dedent(f"""\
            project: servekit_bench
            registry: {repo / "registry.db"}
            provider: local
            online_store:
              type: redis
              connection_string: "{args.redis}"
            entity_key_serialization_version: 3
            """)
    )
    now = datetime.now(UTC)
    names = [f"f{i:02d}" for i in range(N_FEATURES)]
    frame = pd.DataFrame(
        {
            "user_id": ["u1"],
            "event_timestamp": [now],
            **{n: [float(i)] if i % 2 else [i] for i, n in enumerate(names)},
        }
    )
    source_path = repo / "users.parquet"
    frame.to_parquet(source_path)
    user = Entity(name="user", join_keys=["user_id"])
    view = FeatureView(
        name="user_activity",
        entities=[user],
        ttl=timedelta(days=30),
        schema=[Field(name=n, dtype=Float32 if i % 2 else Int64) for i, n in enumerate(names)],
        source=FileSource(path=str(source_path), timestamp_field="event_timestamp"),
        online=True,
    )
    store = FeatureStore(repo_path=str(repo))
    store.apply([user, view])
    store.write_to_online_store("user_activity", frame)
    refs = [f"user_activity:{n}" for n in names]

    def read() -> dict[str, list[object]]:
        return store.get_online_features(features=refs, entity_rows=[{"user_id": "u1"}]).to_dict()

    first = read()
    assert first["f03"] == [3.0], first
    for _ in range(100):  # warm up
        read()
    times = []
    for _ in range(args.reads):
        t0 = time.perf_counter()
        read()
        times.append(time.perf_counter() - t0)
    times.sort()

    writes = []
    for n in range(200):  # the events path: one user's row pushed as a DataFrame
        row = frame.assign(f00=[n], event_timestamp=[datetime.now(UTC)])
        t0 = time.perf_counter()
        store.write_to_online_store("user_activity", row)
        writes.append(time.perf_counter() - t0)
    writes.sort()

    import redis

    host, port = args.redis.split(":")
    client = redis.Redis(host=host, port=int(port))
    client.hset("plain:u1", mapping={n: str(i) for i, n in enumerate(names)})
    raw = []
    for _ in range(args.reads):
        t0 = time.perf_counter()
        client.hgetall("plain:u1")
        raw.append(time.perf_counter() - t0)
    raw.sort()

    def pct(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)

    print(
        json.dumps(
            {
                "feast_version": sys.modules["feast"].__version__,
                "reads": args.reads,
                "features": N_FEATURES,
                "import_s": round(import_s, 2),
                "rss_mib_before_import": round(rss_before, 1),
                "rss_mib_after_import": round(rss_import, 1),
                "rss_mib_after_reads": round(_rss_mib(), 1),
                "get_online_features_ms": {
                    "p50": pct(times, 0.5),
                    "p99": pct(times, 0.99),
                    "mean": round(statistics.fmean(times) * 1000, 3),
                },
                "write_to_online_store_ms": {"p50": pct(writes, 0.5), "p99": pct(writes, 0.99)},
                "redis_hgetall_ms": {"p50": pct(raw, 0.5), "p99": pct(raw, 0.99)},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
