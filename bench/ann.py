"""ANN libraries compared for servekit's vector index, and its filter strategies.

    python bench/ann.py [--items 100000] [--queries 1000] [--threads 2]
                        [--out bench/results/ann.json]
    python bench/ann.py --items 20000 --queries 300   # a quick run

Data: clustered synthetic vectors, not real embeddings (embedding 100k texts with the
example model takes too long on 2 cores): 1,000 Gaussian clusters of uneven size whose
centres gather around 50 topics, unit length, 384 dimensions, seed 0; queries are drawn
from the same mixture and are not in the index. Every library gets the same HNSW
parameters (M 16, construction expansion 128); each one's search expansion is the
smallest of a grid that reaches recall@10 >= 0.95 against exact inner product.

Per library: build time, recall@10 over the queries, p50/p99 latency of one query at a
time on one thread (k 10), serialized index size, and the mean time of adding then
removing single items. Then servekit's `VectorIndex` (models/ann.py) at filter
selectivities, each strategy forced and then the automatic choice. Prints tables and
writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.ann import Dtype, VectorIndex

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

DIM = 384
K = 10
M = 16
EF_CONSTRUCTION = 128
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256)
TARGET_RECALL = 0.95
SINGLE_OPS = 300
FILTER_QUERIES = 200
SELECTIVITIES = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50)
LIBS = (
    "usearch-f32",
    "usearch-f16",
    "usearch-i8",
    "hnswlib",
    "faiss",
    "servekit",
)
# Forced post-filtering still stops growing here (then scans exactly): walks longer
# than this cost more than any exact scan of this benchmark's filters.
ANN_MAX_CANDIDATES = 8_192


def clustered(n: int, centres: F32, seed: int) -> tuple[F32, I64]:
    """`n` unit vectors around `centres` (sizes uneven: a few big clusters, many small),
    and the cluster of each."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(len(centres)) + 10.0)
    which = rng.choice(len(centres), size=n, p=weights / weights.sum())
    # noise of norm ~0.6-1.0 around a unit centre: neighbours in a cluster sit at
    # cosine ~0.5-0.75, clusters of one topic ~0.3, unrelated ones ~0
    noise = rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    noise *= rng.uniform(0.6, 1.0, size=(n, 1)).astype(np.float32)
    return _unit(centres[which] + noise), which.astype(np.int64)


def make_centres(count: int, topics: int, seed: int) -> F32:
    """Cluster centres gathered around `topics` topic directions."""
    rng = np.random.default_rng(seed)
    topic_dirs = _unit(rng.standard_normal((topics, DIM)).astype(np.float32))
    spread = rng.standard_normal((count, DIM)).astype(np.float32) / np.sqrt(DIM)
    return _unit(topic_dirs[rng.integers(0, topics, count)] + 1.2 * spread)


def _unit(x: F32) -> F32:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), np.float32)


def exact_top(data: F32, queries: F32, k: int) -> I64:
    """Exact top-k by inner product, in query chunks to bound memory."""
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 128):
        scores = queries[start : start + 128] @ data.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
        out[start : start + 128] = np.take_along_axis(part, order, 1)
    return out


def recall(found: list[I64] | I64, truth: I64) -> float:
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def percentiles_us(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1e6
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


class Lib:
    """One library behind the few calls the benchmark makes."""

    name = ""
    removes = True

    def build(self, data: F32, threads: int) -> None:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        raise NotImplementedError

    def batch(self, queries: F32, threads: int) -> I64:
        raise NotImplementedError

    def one(self, q: F32) -> I64:
        raise NotImplementedError

    def size_bytes(self) -> int:
        raise NotImplementedError

    def add_one(self, key: int, v: F32) -> None:
        raise NotImplementedError

    def remove_one(self, key: int) -> None:
        raise NotImplementedError


class USearch(Lib):
    def __init__(self, dtype: str) -> None:
        from usearch.index import Index

        self.name = f"usearch {dtype}"
        self.index = Index(
            ndim=DIM, metric="ip", dtype=dtype, connectivity=M, expansion_add=EF_CONSTRUCTION
        )

    def build(self, data: F32, threads: int) -> None:
        self.index.add(np.arange(len(data), dtype=np.uint64), data, threads=threads)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def batch(self, queries: F32, threads: int) -> I64:
        return np.asarray(self.index.search(queries, K, threads=threads).keys, np.int64)

    def one(self, q: F32) -> I64:
        return np.asarray(self.index.search(q, K, threads=1).keys, np.int64)

    def size_bytes(self) -> int:
        return int(self.index.serialized_length)

    def add_one(self, key: int, v: F32) -> None:
        self.index.add(key, v, threads=1)

    def remove_one(self, key: int) -> None:
        self.index.remove(key)


class Hnswlib(Lib):
    name = "hnswlib"

    def build(self, data: F32, threads: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=DIM)
        self.index.init_index(
            max_elements=len(data) + SINGLE_OPS,
            M=M,
            ef_construction=EF_CONSTRUCTION,
            allow_replace_deleted=True,
        )
        self.index.add_items(data, np.arange(len(data)), num_threads=threads)

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def batch(self, queries: F32, threads: int) -> I64:
        labels, _ = self.index.knn_query(queries, k=K, num_threads=threads)
        return np.asarray(labels, np.int64)

    def one(self, q: F32) -> I64:
        labels, _ = self.index.knn_query(q, k=K, num_threads=1)
        return np.asarray(labels[0], np.int64)

    def size_bytes(self) -> int:
        return int(self.index.index_file_size())

    def add_one(self, key: int, v: F32) -> None:
        self.index.add_items(v[None], [key], num_threads=1)

    def remove_one(self, key: int) -> None:
        # a tombstone: the slot stays until an add with replace_deleted reuses it
        self.index.mark_deleted(key)


class Faiss(Lib):
    name = "faiss HNSWFlat"
    removes = False  # IndexHNSWFlat.remove_ids: "not implemented for this type of index"

    def build(self, data: F32, threads: int) -> None:
        import faiss

        self.faiss = faiss
        faiss.omp_set_num_threads(threads)
        self.index = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(data)

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def batch(self, queries: F32, threads: int) -> I64:
        self.faiss.omp_set_num_threads(threads)
        _, ids = self.index.search(queries, K)
        return np.asarray(ids, np.int64)

    def one(self, q: F32) -> I64:
        self.faiss.omp_set_num_threads(1)
        _, ids = self.index.search(q[None], K)
        return np.asarray(ids[0], np.int64)

    def size_bytes(self) -> int:
        return int(self.faiss.serialize_index(self.index).nbytes)

    def add_one(self, key: int, v: F32) -> None:
        self.index.add(v[None])  # faiss numbers items itself, in insertion order


class Servekit(Lib):
    """`VectorIndex` as servekit uses it: graph plus float32 rows, rescored results."""

    def __init__(self, dtype: Dtype) -> None:
        self.name = f"VectorIndex ({dtype} graph)"
        self.index = VectorIndex(DIM, connectivity=M, expansion_add=EF_CONSTRUCTION, dtype=dtype)

    def build(self, data: F32, threads: int) -> None:
        self.index.upsert(np.arange(len(data), dtype=np.uint64), data, threads=threads)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def batch(self, queries: F32, threads: int) -> I64:
        return np.stack([self.one(q) for q in queries])

    def one(self, q: F32) -> I64:
        keys, _ = self.index.search(q, K)
        return keys.astype(np.int64)

    def size_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index.npz"
            self.index.save(path)
            return path.stat().st_size

    def add_one(self, key: int, v: F32) -> None:
        self.index.upsert(np.asarray([key], np.uint64), v[None])

    def remove_one(self, key: int) -> None:
        self.index.remove(np.asarray([key], np.uint64))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    lib: Lib, data: F32, queries: F32, truth: I64, extra: F32, threads: int
) -> dict[str, Any]:
    """Build, tune the search expansion to the target recall, then time single calls."""
    build_s = timed(lambda: lib.build(data, threads))
    sweep: dict[int, float] = {}
    ef = EF_GRID[-1]
    for candidate in EF_GRID:
        lib.set_ef(candidate)
        sweep[candidate] = recall(lib.batch(queries, threads), truth)
        if sweep[candidate] >= TARGET_RECALL:
            ef = candidate
            break
    lib.set_ef(ef)
    found: list[I64] = []
    latencies: list[float] = []
    for q in queries:
        start = time.perf_counter()
        found.append(lib.one(q))
        latencies.append(time.perf_counter() - start)
    p50, p99 = percentiles_us(latencies)
    size = lib.size_bytes()
    base = len(data)
    adds = [timed(lambda i=i: lib.add_one(base + i, extra[i])) for i in range(len(extra))]
    removes = (
        [timed(lambda i=i: lib.remove_one(base + i)) for i in range(len(extra))]
        if lib.removes
        else []
    )
    return {
        "index": lib.name,
        "build_s": round(build_s, 2),
        "ef_search": ef,
        "recall_at_10": round(recall(found, truth), 4),
        "recall_by_ef": {str(e): round(r, 4) for e, r in sweep.items()},
        "p50_us": round(p50, 1),
        "p99_us": round(p99, 1),
        "size_bytes": size,
        "add_one_us": round(float(np.mean(adds)) * 1e6, 1),
        "remove_one_us": round(float(np.mean(removes)) * 1e6, 1) if removes else None,
    }


def filter_masks(n: int, labels: I64, seed: int) -> dict[tuple[str, float], npt.NDArray[np.bool_]]:
    """Masks by key at each selectivity: random items (a filter unrelated to meaning)
    and whole clusters (a category: related to meaning, so often far from the query)."""
    rng = np.random.default_rng(seed)
    masks: dict[tuple[str, float], npt.NDArray[np.bool_]] = {}
    sizes = np.bincount(labels)
    for fraction in SELECTIVITIES:
        masks[("random", fraction)] = rng.random(n) < fraction
        order = rng.permutation(len(sizes))
        chosen = order[: int(np.searchsorted(np.cumsum(sizes[order]), fraction * n)) + 1]
        masks[("category", fraction)] = np.isin(labels, chosen)
    return masks


def filter_run(
    index: VectorIndex, data: F32, queries: F32, mask: npt.NDArray[np.bool_]
) -> dict[str, float]:
    """Latency and recall of filtered searches against exact search over the allowed."""
    allowed = np.flatnonzero(mask)
    truth = allowed[exact_top(data[allowed], queries, K)]
    found: list[I64] = []
    latencies: list[float] = []
    for q in queries:
        start = time.perf_counter()
        keys, _ = index.search(q, K, allowed=mask)
        latencies.append(time.perf_counter() - start)
        found.append(keys.astype(np.int64))
    assert all(mask[f].all() and len(f) == K for f in found), "a filter result broke its rule"
    p50, p99 = percentiles_us(latencies)
    hits = recall(found, truth)
    return {"p50_us": round(p50, 1), "p99_us": round(p99, 1), "recall": round(hits, 4)}


def filters(index: VectorIndex, data: F32, queries: F32, labels: I64) -> list[dict[str, Any]]:
    """Each filter under each strategy: exact forced, ANN with post-filter forced, auto."""
    defaults = (index.exact_max_items, index.max_candidates)
    strategies = {"exact": (len(data), 1), "ann": (0, ANN_MAX_CANDIDATES), "auto": defaults}
    rows = []
    for (kind, fraction), mask in filter_masks(len(data), labels, seed=1).items():
        row: dict[str, Any] = {"filter": kind, "selectivity": fraction, "allowed": int(mask.sum())}
        for name, (exact_max, max_candidates) in strategies.items():
            index.exact_max_items, index.max_candidates = exact_max, max_candidates
            row[name] = filter_run(index, data, queries, mask)
        rows.append(row)
    index.exact_max_items, index.max_candidates = defaults
    return rows


def vector_index_defaults() -> dict[str, Any]:
    """The settings the filter figures were measured with."""
    index = VectorIndex(DIM)
    names = ("dtype", "expansion_search", "exact_max_items", "oversample", "max_candidates")
    return {name: getattr(index, name) for name in names}


def print_tables(results: list[dict[str, Any]], filter_rows: list[dict[str, Any]]) -> None:
    head = f"{'index':<26}{'build s':>8}{'ef':>5}{'recall':>8}{'p50 us':>8}{'p99 us':>8}"
    print(head + f"{'MB':>8}{'add us':>8}{'remove us':>10}")
    for r in results:
        remove = "n/a" if r["remove_one_us"] is None else f"{r['remove_one_us']:.0f}"
        print(
            f"{r['index']:<26}{r['build_s']:>8.1f}{r['ef_search']:>5}{r['recall_at_10']:>8.3f}"
            f"{r['p50_us']:>8.0f}{r['p99_us']:>8.0f}{r['size_bytes'] / 1e6:>8.1f}"
            f"{r['add_one_us']:>8.0f}{remove:>10}"
        )
    if not filter_rows:
        return
    print(f"\n{'filter':<10}{'sel':>6}{'allowed':>9}", end="")
    for name in ("exact", "ann", "auto"):
        print(f"{name + ' p50':>11}{'p99':>7}{'recall':>7}", end="")
    print()
    for row in filter_rows:
        print(f"{row['filter']:<10}{row['selectivity']:>6.0%}{row['allowed']:>9}", end="")
        for name in ("exact", "ann", "auto"):
            f = row[name]
            print(f"{f['p50_us']:>11.0f}{f['p99_us']:>7.0f}{f['recall']:>7.3f}", end="")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2, help="threads for builds only")
    parser.add_argument("--libs", default=",".join(LIBS), help="a subset of these, or servekit-f16")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ann.json")
    args = parser.parse_args()

    started = time.perf_counter()
    centres = make_centres(1_000, 50, seed=0)
    data, labels = clustered(args.items, centres, seed=1)
    queries = clustered(args.queries, centres, seed=2)[0]
    extra = clustered(SINGLE_OPS, centres, seed=3)[0]
    truth = exact_top(data, queries, K)
    took = time.perf_counter() - started
    print(f"data {args.items} x {DIM}, {args.queries} queries, exact top {K} in {took:.1f}s")

    makers: dict[str, Callable[[], Lib]] = {
        "usearch-f32": lambda: USearch("f32"),
        "usearch-f16": lambda: USearch("f16"),
        "usearch-i8": lambda: USearch("i8"),
        "hnswlib": Hnswlib,
        "faiss": Faiss,
        "servekit": lambda: Servekit(VectorIndex(DIM).dtype),
        "servekit-f16": lambda: Servekit("f16"),
    }
    results = []
    filter_rows: list[dict[str, Any]] = []
    for name in args.libs.split(","):
        lib = makers[name]()
        results.append(measure(lib, data, queries, truth, extra, args.threads))
        print(f"  {results[-1]['index']}: done at {time.perf_counter() - started:.0f}s", flush=True)
        if name == "servekit":  # the filters run on the index as servekit configures it
            assert isinstance(lib, Servekit)
            lib.set_ef(VectorIndex(DIM).expansion_search)
            filter_rows = filters(lib.index, data, queries[:FILTER_QUERIES], labels)
        del lib
    print()
    print_tables(results, filter_rows)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "data": {
            "kind": "synthetic clustered: 1000 Gaussian clusters around 50 topics, unit length",
            "items": args.items,
            "dim": DIM,
            "queries": args.queries,
            "seed": 0,
        },
        "hnsw": {"M": M, "ef_construction": EF_CONSTRUCTION, "k": K, "build_threads": args.threads},
        "libraries": results,
        "vector_index_defaults": vector_index_defaults(),
        "filters": filter_rows,
        "total_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} in {report['total_s']}s")


if __name__ == "__main__":
    main()
