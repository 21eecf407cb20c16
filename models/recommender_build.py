"""Build the example recommender: interactions over the example catalog, the two-tower
model trained on their first 50 days, the ranker on its candidates, both scored on the
last 10 days against popularity and item-to-item co-occurrence, packaged as one version.

    python -m models.recommender_build [--out artifacts] [--users 3000] [--force]

Writes `recommender/v1.tar` (the towers as ONNX, each checked against the trained torch
model on real inputs, `ranker.json` and the package metadata: what `serve_config.yaml`
names with its sha256), `recommender/interactions.parquet` (the log, for `servekit
features materialize`) and `recommender/manifest.json` (the files' sha256, the settings
and the evaluation). Deterministic for one seed: training runs on one thread, and the
exported graphs carry no source paths. Across machines the same bytes also need the same
numeric kernels: `make artifacts` runs this with them pinned (AVX2 in torch, MKL, numpy
and OpenBLAS; see PINNED_NUMERICS in the Makefile). Skipped when an intact build is there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.example_interactions import generate, split, write_parquet
from models.package import META_FILE, sha256_file
from models.recommender import RANK_FEATURES, RANKER_FILE, Ranker
from models.recommender_offline import evaluate_pipeline, train_ranker
from models.two_tower import (
    ACTIVITY,
    DIM,
    MAX_TOKENS,
    TOP,
    ItemInputs,
    TwoTower,
    examples,
    export,
    train,
    user_inputs,
)
from stores.catalog import Item

VERSION = "v1"

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


def _package(model: TwoTower, ranker: Ranker, items: list[Item], work: Path, out: Path) -> str:
    """Export, check and pack one version into `out`; its sha256."""
    from models.build import strip_source_info
    from models.package import PackageMeta, TensorSpec, write_package

    files = export(model, work)
    for name in files.values():
        strip_source_info(work / name)
    parity = check_parity(model, items, work)
    if parity > PARITY_MAX_ABS:
        raise SystemExit(f"ONNX towers differ from torch by {parity:.2e}; not written")
    (work / RANKER_FILE).write_text(json.dumps(ranker.to_json(), indent=2) + "\n")
    meta = PackageMeta(
        task="recommendation",
        runtime="onnx",
        model_file=files["user_tower"],
        tokenizer_file="",
        max_seq_length_tokens=MAX_TOKENS,
        embedding_dim=DIM,
        inputs=(
            TensorSpec(name="history", datatype="FP32", shape=(-1, DIM)),
            TensorSpec(name="categories", datatype="INT64", shape=(-1, TOP)),
            TensorSpec(name="category_weights", datatype="FP32", shape=(-1, TOP)),
            TensorSpec(name="brands", datatype="INT64", shape=(-1, TOP)),
            TensorSpec(name="brand_weights", datatype="FP32", shape=(-1, TOP)),
            TensorSpec(name="activity", datatype="FP32", shape=(-1, len(ACTIVITY))),
        ),
        outputs=(TensorSpec(name="user_vector", datatype="FP32", shape=(-1, DIM)),),
        source="two towers and a ranker trained on the example interactions (seeded)",
    )
    (work / META_FILE).write_text(meta.model_dump_json())
    return write_package(work, meta, out)


def build(
    items: list[Item], out: Path, users: int = 3000, epochs: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Generate, train both stages, score, package; the manifest."""
    import torch

    started = time.monotonic()
    torch.set_num_threads(1)  # the same bytes on every machine
    log = generate(items, users, seed)
    train_log, test_log = split(log)
    folder = out / "recommender"
    write_parquet(log, folder / "interactions.parquet")
    rows, _ = examples(items, train_log)
    model = train(items, rows, epochs=epochs, seed=seed)
    ranker, ranker_rows = train_ranker(model, items, train_log, seed)
    scores = evaluate_pipeline(model, ranker, items, train_log, test_log)
    with tempfile.TemporaryDirectory(prefix="servekit-recommender-") as tmp:
        digest = _package(model, ranker, items, Path(tmp), folder / f"{VERSION}.tar")
    manifest = {
        "model": "two-tower + ranker",
        "dim": DIM,
        "seed": seed,
        "users": users,
        "items": len(items),
        "interactions": len(log),
        "train_examples": len(rows.items),
        "ranker_rows": ranker_rows,
        "ranker_weights": {
            f: round(float(w), 4) for f, w in zip(RANK_FEATURES, ranker.weights, strict=True)
        },
        "versions": {VERSION: {"file": f"recommender/{VERSION}.tar", "sha256": digest}},
        "interactions_file": {
            "file": "recommender/interactions.parquet",
            "sha256": sha256_file(folder / "interactions.parquet"),
        },
        "eval": scores,
        "build_s": round(time.monotonic() - started, 1),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_ok(out: Path) -> bool:
    """Whether an intact build is in `out` (its files hash as its manifest says)."""
    try:
        manifest = json.loads((out / "recommender" / "manifest.json").read_text())
        files = [*manifest["versions"].values(), manifest["interactions_file"]]
        return all(
            (out / f["file"]).is_file() and sha256_file(out / f["file"]) == f["sha256"]
            for f in files
        )
    except (OSError, KeyError, ValueError, TypeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from models.example_catalog import DEFAULT_ITEMS
    from models.example_catalog import generate as generate_catalog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    if not args.force and manifest_ok(args.out):
        print(f"artifacts: {args.out}/recommender/manifest.json is up to date, nothing to build")
        return 0
    items = generate_catalog(args.items, args.seed).items
    manifest = build(items, args.out, args.users, args.epochs, args.seed)
    print(json.dumps({k: manifest[k] for k in ("versions", "eval", "build_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
