"""Build the example recommender: interactions over the example catalog, the two-tower
model trained on their first 50 days, scored on the last 10, exported to ONNX.

    python -m models.recommender_build [--out artifacts/recommender/v1] [--users 3000]

Writes `interactions.parquet` (the log, for `servekit features materialize`), the two
towers (`item_tower.onnx`, `user_tower.onnx`, each checked against the trained torch
model on real inputs) and `manifest.json` (files with their sha256, the settings, and
recall@10 / NDCG@10 against popularity). Deterministic for one seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.example_interactions import generate, split, write_parquet
from models.two_tower import (
    DIM,
    ItemInputs,
    TwoTower,
    evaluate,
    examples,
    export,
    train,
    user_inputs,
)
from stores.catalog import Item

PARITY_MAX_ABS = 1e-4


def check_parity(model: TwoTower, items: list[Item], out: Path) -> float:
    """Largest difference between the ONNX towers and the torch ones on real inputs."""
    import onnxruntime as ort

    inputs = ItemInputs.of(items[:256])
    session = ort.InferenceSession(str(out / "item_tower.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"tokens": inputs.tokens, "category": inputs.category, "brand": inputs.brand,
             "price": inputs.price}  # fmt: skip
    (onnx_items,) = session.run(None, feeds)
    worst = float(np.abs(onnx_items - model.item_vectors[:256]).max())
    users = user_inputs([({"A": 3.0, "B": 1.0}, {"X": 2.0}, {"view": 4, "click": 1})] * 3)
    history = model.item_vectors[:3].copy()
    session = ort.InferenceSession(str(out / "user_tower.onnx"), providers=["CPUExecutionProvider"])
    (onnx_users,) = session.run(
        None,
        {"history": history, "categories": users.categories,
         "category_weights": users.category_weights, "brands": users.brands,
         "brand_weights": users.brand_weights, "activity": users.activity},
    )  # fmt: skip
    torch_users = model.user_vectors([[0], [1], [2]], users)
    return max(worst, float(np.abs(onnx_users - torch_users).max()))


def build(
    items: list[Item], out: Path, users: int = 3000, epochs: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Generate, train, score, export; the manifest."""
    started = time.monotonic()
    log = generate(items, users, seed)
    train_log, test_log = split(log)
    write_parquet(log, out / "interactions.parquet")
    rows, states = examples(items, train_log)
    model = train(items, rows, epochs=epochs, seed=seed)
    scores = evaluate(model, items, train_log, test_log, states)
    files = export(model, out)
    parity = check_parity(model, items, out)
    if parity > PARITY_MAX_ABS:
        raise SystemExit(f"ONNX towers differ from torch by {parity:.2e}; not written")
    manifest = {
        "model": "two-tower",
        "dim": DIM,
        "seed": seed,
        "users": users,
        "interactions": len(log),
        "train_examples": len(rows.items),
        "files": {
            name: {"file": f, "sha256": hashlib.sha256((out / f).read_bytes()).hexdigest()}
            for name, f in {**files, "interactions": "interactions.parquet"}.items()
        },
        "onnx_parity_max_abs": parity,
        "eval": {
            "test_users": scores.users,
            "recall@10": round(scores.recall, 4),
            "ndcg@10": round(scores.ndcg, 4),
            "popularity_recall@10": round(scores.popularity_recall, 4),
            "popularity_ndcg@10": round(scores.popularity_ndcg, 4),
        },
        "build_s": round(time.monotonic() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from models.example_catalog import DEFAULT_ITEMS
    from models.example_catalog import generate as generate_catalog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("artifacts/recommender/v1"))
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    items = generate_catalog(args.items, args.seed).items
    manifest = build(items, args.out, args.users, args.epochs, args.seed)
    print(json.dumps({k: manifest[k] for k in ("eval", "onnx_parity_max_abs", "build_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
