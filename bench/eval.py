"""Search quality: NDCG@10 and recall@10 of the search model's versions, by mode.

    python bench/eval.py                 # make eval: the example catalog, the test queries
    python bench/eval.py --items 5000 --versions v2 --split dev
    python bench/eval.py --split dev --alpha 0.4,0.45,0.5,0.55   # tune the fusion on dev
    python bench/eval.py --catalog my-items.jsonl --queries my-queries.jsonl

Builds the example catalog (`models/example_catalog.py`, 50,000 items, written to
artifacts/catalog/ with its labelled queries), embeds it with every version of the
search model in serve_config.yaml (loaded as a replica loads them), indexes it with the
service's own `CatalogIndex` (BM25 over the text fields, the usearch vector index per
version, the configured fusion) and runs each query of the split in three modes:
`vector` (the version's embeddings alone), `lexical` (BM25 alone; the same for every
version) and `hybrid` (both, fused as `search.fusion` says). Prints the figures and
writes them to bench/results/eval.json.

Item embeddings are cached in artifacts/eval-cache/, keyed by the version artifact's
sha256 and a hash of the embedded texts, so a rerun only embeds the queries. Versions
embed on every core (`intra_op_threads` changes speed, vectors by rounding at most); the
index is loaded in one write (BM25 scores do not depend on how items were written).
`--fusion` and `--alpha` score other fusions than the configured one: choose on `dev`,
report on `test`.
`--catalog` and `--queries` take JSON lines in the formats of `read_items` and
`read_queries` (models/example_catalog.py, models/example_queries.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.pipelines.catalog_index import CONVEX_ALPHA, CatalogIndex
from deployments.pipelines.offline import Space, config_spaces, item_vectors
from models.catalog_snapshot import texts_hash
from models.example_queries import Query
from models.ranking_metrics import ndcg_at_k, recall_at_k
from stores.catalog import Item

F32 = npt.NDArray[np.float32]
K = 10
MODES = ("vector", "lexical", "hybrid")
EMBED_CHUNK = 512
LEXICAL = "-"  # the version column of lexical rows: BM25 uses no model
BOOTSTRAP_RESAMPLES = 10_000


def check_labels(items: Sequence[Item], queries: Sequence[Query]) -> None:
    """Refuse labels that name items the catalog does not have."""
    ids = {item.id for item in items}
    for q in queries:
        unknown = [i for i in q.relevant if i not in ids]
        if unknown:
            raise ValueError(
                f"query {q.id!r} grades {len(unknown)} item(s) the catalog does not have, "
                f"e.g. {unknown[0]!r}"
            )
        if not any(g > 0 for g in q.relevant.values()):
            raise ValueError(f"query {q.id!r} grades no item above 0")


def build_index(items: Sequence[Item]) -> CatalogIndex:
    """The service's catalog index with every item (text and attributes), loaded in one
    write: BM25 scores do not depend on how the items were written (models/lexical.py)."""
    index = CatalogIndex()
    index.upsert_many(items)
    index.lexical.compact()  # as the background compaction the write started would
    return index


def evaluate(
    items: Sequence[Item],
    queries: Sequence[Query],
    spaces: Sequence[Space],
    fusion: str,
    cache_dir: Path | None = None,
    modes: Sequence[str] = MODES,
    log: Callable[[str], None] = print,
    alphas: Sequence[float] = (CONVEX_ALPHA,),
) -> dict[str, Any]:
    """Index the items, run every query in every mode, and return the figures: one row
    per (mode, version, fusion) with NDCG@10 and recall@10, overall and by query kind.
    A convex hybrid is run at each vector weight of `alphas`."""
    check_labels(items, queries)
    timings: dict[str, float] = {}
    started = time.monotonic()
    index = build_index(items)
    timings["index_text_s"] = time.monotonic() - started
    texts = [q.query for q in queries]
    fusions = [(f"convex {a:g}", a) for a in alphas] if fusion == "convex" else [(fusion, 0.0)]
    runs: dict[tuple[str, str, str], list[list[str]]] = {}
    if "lexical" in modes:
        runs["lexical", LEXICAL, "-"] = [
            _ids(index.search("", None, t, K, None, True)) for t in texts
        ]
    for space in spaces:
        if not {"vector", "hybrid"} & set(modes):
            break
        started = time.monotonic()
        vectors, cached = item_vectors(space, items, cache_dir, log)
        timings[f"embed_items_s[{space.name}]"] = time.monotonic() - started
        log(f"{space.name}: {len(items)} item vectors {'from the cache' if cached else 'made'}")
        started = time.monotonic()
        index.set_vectors(space.name, {item.id: v for item, v in zip(items, vectors, strict=True)})
        timings[f"index_vectors_s[{space.name}]"] = time.monotonic() - started
        query_vectors = space.embed(texts) if texts else np.zeros((0, 0), np.float32)
        pairs = list(zip(query_vectors, texts, strict=True))
        if "vector" in modes:
            runs["vector", space.name, "-"] = [
                _ids(index.search(space.name, v, t, K, None, False)) for v, t in pairs
            ]
        if "hybrid" in modes:
            for label, alpha in fusions:
                runs["hybrid", space.name, label] = [
                    _ids(index.search(space.name, v, t, K, None, True, fusion, alpha))
                    for v, t in pairs
                ]
    rows = [_row(*key, queries, ranked) for key, ranked in runs.items()]
    return {
        "rows": rows,
        "comparisons": comparisons(rows),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }


def paired_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Mean of `a - b` over the same queries and its 95 % bootstrap interval (queries
    resampled with replacement): an interval that holds 0 is a difference these queries
    cannot tell from chance."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not len(diff):
        return {"mean": 0.0, "low": 0.0, "high": 0.0}
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(diff))
    means = np.concatenate(
        [
            diff[rng.integers(0, len(diff), (min(chunk, resamples - done), len(diff)))].mean(axis=1)
            for done in range(0, resamples, chunk)
        ]
    )
    low, high = (round(float(x), 4) for x in np.percentile(means, [2.5, 97.5]))
    return {"mean": round(float(diff.mean()), 4), "low": low, "high": high}


def comparisons(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each hybrid row's NDCG@10 against lexical and against its version's vectors."""
    lexical = [r for r in rows if r["mode"] == "lexical"]
    out = []
    for row in (r for r in rows if r["mode"] == "hybrid"):
        vector = [r for r in rows if r["mode"] == "vector" and r["version"] == row["version"]]
        for other in lexical + vector:
            ids = list(row["ndcg@10_by_query"])
            diff = paired_difference(
                [row["ndcg@10_by_query"][i] for i in ids],
                [other["ndcg@10_by_query"][i] for i in ids],
            )
            out.append({"a": _name(row), "b": _name(other), "ndcg@10_difference": diff})
    return out


def _name(row: dict[str, Any]) -> str:
    parts = [row["mode"], row["version"], row["fusion"]]
    return " ".join(p for p in parts if p != LEXICAL)


def _ids(hits: Sequence[Any]) -> list[str]:
    return [hit.item.id for hit in hits]


def _row(
    mode: str, version: str, fusion: str, queries: Sequence[Query], ranked: Sequence[list[str]]
) -> dict[str, Any]:
    ndcg = [ndcg_at_k(r, q.relevant, K) for q, r in zip(queries, ranked, strict=True)]
    recall = [recall_at_k(r, q.relevant, K) for q, r in zip(queries, ranked, strict=True)]
    kinds = sorted({q.kind or "all" for q in queries})

    def by_kind(values: list[float]) -> dict[str, float]:
        return {
            kind: _mean(
                [v for q, v in zip(queries, values, strict=True) if (q.kind or "all") == kind]
            )
            for kind in kinds
        }

    return {
        "mode": mode,
        "version": version,
        "fusion": fusion,
        "queries": len(queries),
        "ndcg@10": _mean(ndcg),
        "recall@10": _mean(recall),
        "ndcg@10_by_kind": by_kind(ndcg),
        "recall@10_by_kind": by_kind(recall),
        "ndcg@10_by_query": {q.id: round(v, 4) for q, v in zip(queries, ndcg, strict=True)},
    }


def _mean(values: Sequence[float]) -> float:
    return round(float(np.mean(values)), 4) if values else 0.0


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The figures as a Markdown table: one row per mode and version."""
    kinds = sorted({kind for row in rows for kind in row["ndcg@10_by_kind"]})
    head = ["mode", "version", "fusion", "NDCG@10", "recall@10", *(f"{k} NDCG" for k in kinds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in sorted(rows, key=lambda r: (MODES.index(r["mode"]), r["version"], r["fusion"])):
        cells = [row["mode"], row["version"], row["fusion"]]
        cells += [f"{row['ndcg@10']:.3f}", f"{row['recall@10']:.3f}"]
        cells += [f"{row['ndcg@10_by_kind'].get(k, 0.0):.3f}" for k in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the command -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--items", type=int, default=50_000, help="example catalog size")
    parser.add_argument("--seed", type=int, default=0, help="example catalog seed")
    parser.add_argument("--catalog", type=Path, help="items as JSON lines, instead")
    parser.add_argument("--queries", type=Path, help="labelled queries as JSON lines")
    parser.add_argument("--split", choices=("dev", "test", "all"), default="test")
    parser.add_argument("--versions", help="comma-separated, default: every version")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    parser.add_argument(
        "--fusion", choices=("convex", "rrf"), help="of the hybrid; default: search.fusion"
    )
    parser.add_argument(
        "--alpha",
        default=f"{CONVEX_ALPHA:g}",
        help="vector weights of the convex hybrid to score, comma-separated (tune on dev); "
        "default: the service's",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "artifacts" / "catalog",
        help="where the "
        "example catalog and its queries are written (products.jsonl, queries.jsonl)",
    )
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "artifacts" / "eval-cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval.json")
    return parser


def _data(args: argparse.Namespace) -> tuple[list[Item], list[Query], str]:
    """The items and queries to score, and where they came from."""
    from models.example_catalog import generate, read_items, write_items
    from models.example_queries import make_queries, read_queries, write_queries

    if args.catalog is not None:
        if args.queries is None:
            raise SystemExit("--catalog needs --queries: labels of its items")
        return read_items(args.catalog), read_queries(args.queries), str(args.catalog)
    catalog = generate(args.items, args.seed)
    write_items(catalog.items, args.data_dir / "products.jsonl")
    queries = make_queries(catalog, seed=args.seed)
    write_queries(queries, args.data_dir / "queries.jsonl")
    if args.queries is not None:
        queries = read_queries(args.queries)
    source = f"models/example_catalog.py, {args.items} items, seed {args.seed}"
    return catalog.items, queries, source


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    started = time.monotonic()
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        raise SystemExit(f"no mode {bad[0]!r}: {', '.join(MODES)}")
    try:
        alphas = [float(a) for a in args.alpha.split(",") if a]
    except ValueError:
        alphas = []
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise SystemExit(f"--alpha {args.alpha}: expected weights in [0, 1], comma-separated")
    items, queries, source = _data(args)
    scored = [q for q in queries if args.split == "all" or q.split == args.split]
    if not scored:
        raise SystemExit(f"no queries in split {args.split!r}")
    versions = [v for v in args.versions.split(",") if v] if args.versions else None
    spaces, model, fusion = (
        config_spaces(args.config, versions) if {"vector", "hybrid"} & set(modes) else ([], "", "")
    )
    fusion = args.fusion or fusion or "convex"
    print(f"{len(items)} items ({source}); {len(scored)} {args.split} queries; fusion {fusion}")
    result = evaluate(items, scored, spaces, fusion, args.cache_dir, modes, print, alphas)
    result["timings_s"]["total_s"] = round(time.monotonic() - started, 1)
    print(table(result["rows"]))
    for c in result["comparisons"]:
        d = c["ndcg@10_difference"]
        interval = f"95 % {d['low']:+.3f} to {d['high']:+.3f}"
        print(f"{c['a']} - {c['b']}: NDCG@10 {d['mean']:+.3f} ({interval})")
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in result["timings_s"].items()))
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "catalog": {"source": source, "items": len(items), "hash": texts_hash(items)},
        "queries": {"split": args.split, "count": len(scored), "file": str(args.queries or "")},
        "model": model,
        "fusion": fusion,
        "k": K,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
