"""How long a replica takes to have a catalog searchable: from its snapshot artifact, or
from the store's change log alone.

    python bench/snapshot_start.py [--snapshot artifacts/catalog/products.index]

Seeds a fresh SQLite store from the snapshot (as the first replica does), then starts
the search service twice on it, as a new replica would: once with the snapshot declared
(items and vector graphs loaded, the change log replayed only to compare), once without
(every item read from the log, BM25 and the graphs built from the stored vectors).
Prints both times and the ratio; writes bench/results/snapshot_start.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.pipelines.search import SearchService
from models.catalog_snapshot import CatalogSnapshot, read_snapshot
from stores.catalog_sql import open_catalog_store

LOG = logging.getLogger("bench.snapshot")


async def _never(tenant: str, space: str, texts: list[str]) -> npt.NDArray[np.float32]:
    raise AssertionError("nothing is embedded: every vector is stored")


async def _start(url: str, snapshot: CatalogSnapshot | None, spaces: list[str]) -> float:
    sources = [] if snapshot is None else [("acme", "products", lambda: snapshot)]
    artifacts = {} if snapshot is None else {s: v.model_sha256 for s, v in snapshot.spaces.items()}
    service = SearchService(
        open_catalog_store(url), _never, 0.2, LOG, backfill_delay_s=3600,
        snapshots=sources, space_artifacts=artifacts,
    )  # fmt: skip
    started = time.perf_counter()
    await service.start(spaces)
    took = time.perf_counter() - started
    assert service.ready_spaces("acme", "products") == spaces
    await service.close()
    return took


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--snapshot", type=Path, default=ROOT / "artifacts/catalog/products.index")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/snapshot_start.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    snapshot = read_snapshot(args.snapshot)
    read_s = time.perf_counter() - started
    spaces = sorted(snapshot.spaces)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/registry.db"
        store = open_catalog_store(url)
        started = time.perf_counter()
        vectors = {s: snapshot.vectors_bytes(s) for s in spaces}
        store.seed("acme", "products", snapshot.items, vectors)
        seed_s = time.perf_counter() - started
        store.close()
        with_snapshot = asyncio.run(_start(url, snapshot, spaces))
        from_log = asyncio.run(_start(url, None, spaces))
    result = {
        "items": len(snapshot.items),
        "spaces": spaces,
        "read_snapshot_s": round(read_s, 2),
        "seed_store_s": round(seed_s, 2),
        "start_with_snapshot_s": round(with_snapshot + read_s, 2),
        "start_from_change_log_s": round(from_log, 2),
        "speedup": round(from_log / (with_snapshot + read_s), 2),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
