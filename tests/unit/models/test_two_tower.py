"""The recommender's candidate model on a small catalog: interactions from hidden tastes,
training that learns them (beats popularity), the same model from the same seed, and
ONNX towers that answer as the trained ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.example_catalog import generate as generate_catalog
from models.example_interactions import generate, split
from models.recommender_build import build
from models.two_tower import examples, train


@pytest.fixture(scope="module")
def items() -> list:
    return generate_catalog(3000, seed=1).items


def test_interactions_follow_a_funnel_and_split_by_time(items: list) -> None:
    log = generate(items, users=100, seed=3)
    assert log == generate(items, users=100, seed=3)
    assert [e.timestamp for e in log] == sorted(e.timestamp for e in log)
    kinds = [e.type for e in log]
    assert kinds.count("view") > kinds.count("click") > kinds.count("add_to_cart")
    assert kinds.count("add_to_cart") > kinds.count("purchase") > 0
    train_log, test_log = split(log)
    assert train_log
    assert test_log
    assert max(e.timestamp for e in train_log) < min(e.timestamp for e in test_log)


def test_training_is_deterministic(items: list) -> None:
    train_log, _ = split(generate(items, users=150, seed=2))
    rows, _ = examples(items, train_log)
    a = train(items, rows, epochs=1, seed=5, log=lambda _: None)
    b = train(items, rows, epochs=1, seed=5, log=lambda _: None)
    assert np.array_equal(a.item_vectors, b.item_vectors)
    assert np.allclose(np.linalg.norm(a.item_vectors, axis=1), 1, atol=1e-5)


# What the build pins (the Makefile's PINNED_NUMERICS), less the BLAS settings varied below.
_PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_TRAIN_AND_HASH = """
import hashlib
from models.example_catalog import generate as generate_catalog
from models.example_interactions import generate, split
from models.two_tower import examples, train
items = generate_catalog(1500, seed=1).items
rows, _ = examples(items, split(generate(items, users=120, seed=2))[0])
model = train(items, rows, epochs=1, seed=5, log=lambda _: None)
print(hashlib.sha256(model.item_vectors.tobytes()).hexdigest())
"""


def test_training_takes_no_sum_from_torchs_blas() -> None:
    """The same bytes whichever code path torch's MKL (and oneDNN) would take: their
    sums differ between CPUs even told to keep to AVX2, so the shipped sha256 held on
    one kind of machine only. Each run is a fresh process, the way the build runs."""
    digests = set()
    for blas in ({"MKL_CBWR": "AVX2"}, {"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}):
        env = {**os.environ, **_PINNED, **blas}
        run = subprocess.run(
            [sys.executable, "-c", _TRAIN_AND_HASH],
            env=env, capture_output=True, text=True, timeout=300, check=True,
            cwd=Path(__file__).resolve().parents[3],
        )  # fmt: skip
        digests.add(run.stdout.strip().splitlines()[-1])
    assert len(digests) == 1, digests


def test_the_built_recommender_beats_popularity_and_packages(items: list, tmp_path: Path) -> None:
    from models import ArtifactRef, ArtifactStore
    from models.recommender import Profile, Recommender
    from stores.catalog import Item

    manifest = build(items, tmp_path, users=600, epochs=3, seed=0)
    scores = manifest["eval"]
    assert scores["users"]["test_users"] > 100
    ranked, popular = scores["two-tower + ranker"], scores["popularity"]
    assert ranked["recall@10"] > 1.5 * popular["recall@10"]
    assert ranked["ndcg@10"] > popular["ndcg@10"]
    on_disk = json.loads((tmp_path / "recommender" / "manifest.json").read_text())
    entry = on_disk["versions"]["v1"]
    store = ArtifactStore(cache_dir=tmp_path / "cache")
    package = store.resolve(ArtifactRef(uri=str(tmp_path / entry["file"]), sha256=entry["sha256"]))
    assert package.meta.task == "recommendation"
    served = Recommender(package.path)
    vectors = served.item_vectors([*items[:5], Item("new", {"title": "never seen"}, {})])
    assert vectors.shape == (6, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    profile = Profile([items[0].id], {"shoes": 1.0}, {}, {"view": 3, "click": 1})
    user = served.user_vector(profile, vectors[:1])
    assert user.shape == (64,)
    assert served.ranker.score(np.zeros((2, 7), np.float32)).shape == (2,)
