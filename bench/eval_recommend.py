"""Recommendation quality: the shipped recommender against popularity and item-to-item
co-occurrence, and personalized search against plain search (`make eval`'s second half).

    python bench/eval_recommend.py [--users 1000]
    python bench/eval_recommend.py --catalog items.jsonl --interactions log.parquet

Both on the example catalog (50,000 items) and the interactions the recommender was
built from (`artifacts/recommender/interactions.parquet`), split by time: what users do
in the last 10 days (click 1, add to cart 2, purchase 3) is the truth.

- Recommender: the package named in serve_config.yaml, as a replica runs it (the ONNX
  towers, the 150 candidates, its ranker), scored by recall@10 and NDCG@10 over every
  test user, beside the towers alone, the most engaged items, and co-occurrence.
- Personalized search: for each of `--users` test users, the query is the name of the
  category they engaged with most after the split (e.g. "Bluetooth speakers"), graded by
  what they engaged with there; plain search (the search model's first version, hybrid,
  as shipped) against the same search with the user (the best 50 reordered by their
  affinities at the split).
`--catalog` (JSON lines, as `read_items` reads them) and `--interactions` (a parquet of
user, item, type, timestamp: what `servekit features materialize` reads) score other
data: the log's last `--test-days` days are the truth, the rest the history.
Writes bench/results/eval_recommend.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.pipelines.personalize import AFFINITY_WEIGHT
from models.recommender import F32, Recommender
from models.two_tower import DIM, UserInputs

K = 10


class PackageTowers:
    """The shipped towers as the offline evaluation reads a trained model."""

    def __init__(self, recommender: Recommender, items: Sequence[Any]) -> None:
        self.recommender = recommender
        self.item_vectors = np.concatenate(
            [recommender.item_vectors(items[at : at + 4096]) for at in range(0, len(items), 4096)]
        )

    def user_vectors(self, history: Sequence[Sequence[int]], users: UserInputs) -> F32:
        """As `TwoTower.user_vectors`: recent item slots and the other inputs."""
        hist = np.zeros((len(history), DIM), np.float32)
        for n, slots in enumerate(history):
            if slots:
                hist[n] = self.item_vectors[list(slots)].mean(0)
        return self.recommender.user_vectors(hist, users)


def read_log(path: Path) -> list[Any]:
    """The interactions parquet, oldest first."""
    import pyarrow.parquet as pq

    from models.example_interactions import Interaction

    table = pq.read_table(path).to_pydict()
    return [
        Interaction(u, i, t, float(ts))
        for u, i, t, ts in zip(
            table["user"], table["item"], table["type"], table["timestamp"], strict=True
        )
    ]


def personalized_search(
    items: Sequence[Any],
    train: Sequence[Any],
    test: Sequence[Any],
    users: int,
    offset: int = 0,
    weights: Sequence[float] = (AFFINITY_WEIGHT,),
) -> dict[str, Any]:
    """Plain against personalized search over test users' favourite categories (the
    `users` test users from `offset` on, in id order), at each affinity weight."""
    import yaml

    from configs.schema import AppArgs
    from deployments.pipelines.catalog_index import CatalogIndex
    from deployments.pipelines.offline import config_spaces, item_vectors
    from deployments.pipelines.personalize import DEPTH, personalize
    from models.ranking_metrics import ndcg_at_k, recall_at_k
    from models.recommender_offline import profile, relevant
    from models.two_tower import examples

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = AppArgs.model_validate(doc["applications"][0]["args"])
    spaces, _, fusion = config_spaces(ROOT / "serve_config.yaml", ["v1"])
    space = spaces[0]
    vectors, _ = item_vectors(space, items, ROOT / "artifacts" / "eval-cache", print)
    index = CatalogIndex()
    index.upsert_many(items)
    index.set_vectors(space.name, {item.id: v for item, v in zip(items, vectors, strict=True)})
    category = {item.id: str(item.attributes["category"]) for item in items}
    truth = relevant(test)
    _, states = examples(items, train)
    ids = [item.id for item in items]
    chosen = sorted(u for u in truth if u in states)[offset : offset + users]
    queries: dict[str, tuple[str, dict[str, int]]] = {}
    for user in chosen:
        top = Counter(category[i] for i in truth[user]).most_common(1)[0][0]
        graded = {i: g for i, g in truth[user].items() if category[i] == top}
        queries[user] = (top.split(" > ")[-1], graded)
    texts = sorted({q for q, _ in queries.values()})
    qvec = dict(zip(texts, space.embed(texts), strict=True))
    hybrid = args.search.hybrid_default
    names = {w: "personalized" if len(weights) == 1 else f"personalized {w:g}" for w in weights}
    sums = {"plain": [0.0, 0.0], **{name: [0.0, 0.0] for name in names.values()}}
    for user, (text, graded) in queries.items():
        found = index.search(space.name, qvec[text], text, DEPTH, None, hybrid, fusion)
        liked = profile(states[user], ids)
        runs = {"plain": [h.item.id for h in found[:K]]}
        for w, name in names.items():
            runs[name] = [h.item.id for h in personalize(found, liked, K, w)]
        for name, ranked in runs.items():
            sums[name][0] += recall_at_k(ranked, graded, K)
            sums[name][1] += ndcg_at_k(ranked, graded, K)
    n = max(1, len(queries))
    out: dict[str, Any] = {
        name: {f"recall@{K}": round(r / n, 4), f"ndcg@{K}": round(g / n, 4)}
        for name, (r, g) in sums.items()
    }
    out["users"] = len(queries)
    out["space"] = space.name
    out["ndcg_lift"] = {
        name: round(out[name][f"ndcg@{K}"] / max(1e-9, out["plain"][f"ndcg@{K}"]), 3)
        for name in names.values()
    }
    return out


def main(argv: list[str] | None = None) -> int:
    """Score both and write the results."""
    import yaml

    from configs.schema import AppArgs
    from models import ArtifactRef, ArtifactStore
    from models.example_catalog import DEFAULT_ITEMS, generate
    from models.recommender_offline import evaluate_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=1000, help="personalized-search users")
    parser.add_argument("--offset", type=int, default=0, help="skip this many test users")
    parser.add_argument("--weights", default=str(AFFINITY_WEIGHT), help="affinity weights")
    parser.add_argument("--catalog", type=Path, help="items (JSON lines); default: the example")
    parser.add_argument("--interactions", type=Path, help="a parquet log over those items")
    parser.add_argument("--test-days", type=float, default=10.0, help="the log's last days")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "eval_recommend.json"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = AppArgs.model_validate(doc["applications"][0]["args"])
    model = app.recommender()
    if model is None:
        raise SystemExit("serve_config.yaml has no recommender")
    version, spec = next(iter(app.models[model].versions.items()))
    package = ArtifactStore().resolve(ArtifactRef(str(ROOT / spec.artifact.uri),
                                                  spec.artifact.sha256))  # fmt: skip
    recommender = Recommender(package.path, threads=2)
    if args.catalog is not None:
        from models.example_catalog import read_items

        if args.interactions is None:
            raise SystemExit("--catalog needs --interactions: a log over its items")
        items = read_items(args.catalog)
    else:
        items = generate(DEFAULT_ITEMS, 0).items
    log = read_log(args.interactions or ROOT / "artifacts" / "recommender" / "interactions.parquet")
    known = {item.id for item in items}
    log = [e for e in log if e.item in known]
    if not log:
        raise SystemExit("no interaction names an item of the catalog")
    cut = max(e.timestamp for e in log) - args.test_days * 86_400
    train = [e for e in log if e.timestamp < cut]
    test = [e for e in log if e.timestamp >= cut]
    towers = PackageTowers(recommender, items)
    scores = evaluate_pipeline(towers, recommender.ranker, items, train, test)
    print(f"recommender {model}/{version}:")
    for method, row in scores.items():
        if method != "users":
            print(f"  {method:20s} recall@10 {row['recall@10']:.4f}  NDCG@10 {row['ndcg@10']:.4f}")
    weights = [float(w) for w in args.weights.split(",") if w]
    search = personalized_search(items, train, test, args.users, args.offset, weights)
    print(f"search over {search['users']} users' favourite categories ({search['space']}):")
    for name in ["plain", *search["ndcg_lift"]]:
        row = search[name]
        print(f"  {name:20s} recall@10 {row['recall@10']:.4f}  NDCG@10 {row['ndcg@10']:.4f}")
    report = {
        "recommender": {"version": f"{model}/{version}", **scores},
        "personalized_search": search,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
