"""The vector index: recall against exact search, upserts and removes, filters that keep
their promise of k results, snapshots that restore exactly, searches during writes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.ann import VectorIndex
from models.errors import ArtifactFormatError, InvalidInputError
from tests.conftest import REPO_ROOT

DIM = 64
ITEMS = 20_000
K = 10
F32 = npt.NDArray[np.float32]


def unit(x: F32) -> F32:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), np.float32)


def clustered(n: int, seed: int, clusters: int = 200) -> tuple[F32, npt.NDArray[np.int64]]:
    """Unit vectors around `clusters` centres (shared by every seed), and their cluster."""
    centres = unit(np.random.default_rng(0).standard_normal((clusters, DIM)).astype(np.float32))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    noise = rng.standard_normal((n, DIM)).astype(np.float32) * (0.8 / np.sqrt(DIM))
    return unit(centres[labels] + noise), labels


def exact(data: F32, allowed: npt.NDArray[np.int64], q: F32, k: int) -> npt.NDArray[np.int64]:
    """Keys of the exact top-k among `allowed` (keys are row numbers)."""
    scores = (data @ q)[allowed]  # a matrix-vector product beats gathering the rows
    if len(scores) > k:
        top = np.argpartition(-scores, k - 1)[:k]
        return allowed[top[np.argsort(-scores[top], kind="stable")]]
    return allowed[np.argsort(-scores, kind="stable")]


@pytest.fixture(scope="module")
def data() -> tuple[F32, npt.NDArray[np.int64]]:
    return clustered(ITEMS, seed=1)


@pytest.fixture(scope="module")
def queries() -> F32:
    return clustered(100, seed=2)[0]


@pytest.fixture(scope="module")
def built(data: tuple[F32, npt.NDArray[np.int64]]) -> VectorIndex:
    index = VectorIndex(DIM)
    index.upsert(np.arange(ITEMS, dtype=np.uint64), data[0], threads=2)
    return index


def recall(found: list[npt.NDArray[np.uint64]], truth: list[npt.NDArray[np.int64]]) -> float:
    pairs = zip(found, truth, strict=True)
    hits = sum(len(np.intersect1d(f.astype(np.int64), t)) for f, t in pairs)
    return hits / sum(len(t) for t in truth)


def test_recall_against_exact(
    built: VectorIndex, data: tuple[F32, npt.NDArray[np.int64]], queries: F32
) -> None:
    everything = np.arange(ITEMS)
    found, truth = [], []
    for q in queries:
        keys, scores = built.search(q, K)
        assert len(keys) == K
        assert np.all(np.diff(scores) <= 0), "best first"
        np.testing.assert_allclose(scores, data[0][keys.astype(np.int64)] @ q, rtol=1e-5)
        found.append(keys)
        truth.append(exact(data[0], everything, q, K))
    assert len(built) == ITEMS
    assert recall(found, truth) >= 0.95


@pytest.mark.parametrize("strategy", ["auto", "ann", "exact"])
@pytest.mark.parametrize("selectivity", [0.001, 0.05, 0.6])
def test_filters_return_the_best_allowed(
    built: VectorIndex,
    data: tuple[F32, npt.NDArray[np.int64]],
    queries: F32,
    selectivity: float,
    strategy: str,
) -> None:
    mask = np.random.default_rng(3).random(ITEMS) < selectivity
    allowed = np.flatnonzero(mask)
    saved = built.exact_max_items
    # forced: the graph walk with post-filter wherever it is allowed; or exact search,
    # gathering the allowed rows (0.1%, 5%) or scanning all of them (60%)
    built.exact_max_items = {"auto": saved, "ann": 0, "exact": ITEMS}[strategy]
    try:
        found, truth = [], []
        for q in queries:
            keys, _ = built.search(q, K, allowed=mask)
            assert len(keys) == min(K, len(allowed))
            assert mask[keys.astype(np.int64)].all()
            found.append(keys)
            truth.append(exact(data[0], allowed, q, K))
    finally:
        built.exact_max_items = saved
    assert recall(found, truth) >= 0.95


def test_a_filter_far_from_the_query_still_returns_k(
    built: VectorIndex, data: tuple[F32, npt.NDArray[np.int64]], queries: F32
) -> None:
    # categories the query is not about: the graph walk finds none of them nearby, even
    # at `max_candidates`, and the index must go exact rather than come back short
    vectors, labels = data
    q = queries[0]
    closeness = np.array([(vectors[labels == c] @ q).max() for c in range(labels.max() + 1)])
    mask = np.isin(labels, np.argsort(closeness)[:20])
    saved = built.exact_max_items
    built.exact_max_items = 0
    try:
        keys, _ = built.search(q, K, allowed=mask)
    finally:
        built.exact_max_items = saved
    np.testing.assert_array_equal(keys, exact(vectors, np.flatnonzero(mask), q, K))


def test_mask_shorter_than_the_key_space_allows_nothing_past_its_end(built: VectorIndex) -> None:
    q = unit(np.ones((1, DIM), np.float32))[0]
    keys, _ = built.search(q, K, allowed=np.ones(5, np.bool_))
    assert sorted(keys.tolist()) == [0, 1, 2, 3, 4]
    assert len(built.search(q, K, allowed=np.zeros(0, np.bool_))[0]) == 0


def test_keys_use_all_64_bits() -> None:
    vectors, _ = clustered(3, seed=12)
    big = np.array([2**64 - 1, 2**63 + 5, 3], np.uint64)
    index = VectorIndex(DIM)
    index.upsert(big, vectors)
    keys, _ = index.search(vectors[0], 3)
    assert keys.dtype == np.uint64
    assert sorted(keys.tolist()) == sorted(big.tolist())
    assert keys[0] == 2**64 - 1
    only_three = np.zeros(4, np.bool_)
    only_three[3] = True
    assert index.search(vectors[0], 3, allowed=only_three)[0].tolist() == [3]


def test_upsert_replaces_and_remove_removes() -> None:
    vectors, _ = clustered(3_000, seed=4)
    index = VectorIndex(DIM, exact_max_items=0)  # searches walk the graph
    index.upsert(np.arange(3_000, dtype=np.uint64), vectors)
    moved = vectors[2_999]
    index.upsert(np.array([7], np.uint64), moved[None])
    assert len(index) == 3_000
    keys, scores = index.search(moved, 2)
    assert set(keys.tolist()) == {7, 2_999}
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    for exact_max_items in (0, 10_000):  # the graph walk, then exact search
        index.exact_max_items = exact_max_items
        keys, scores = index.search(vectors[7], K)
        assert len(set(keys.tolist())) == len(keys), "one result per key"
        assert all(s < 0.99 for key, s in zip(keys.tolist(), scores, strict=True) if key == 7)
    index.exact_max_items = 0

    gone = np.arange(0, 3_000, 3, dtype=np.uint64)
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0
    assert len(index) == 3_000 - len(gone)
    for q in vectors[::50]:
        for allowed in (None, np.ones(3_000, np.bool_)):
            keys, _ = index.search(q, K, allowed=allowed)
            assert len(set(keys.tolist())) == K
            assert not np.isin(keys, gone).any()
    exact_keys, _ = index.search(vectors[3], K, allowed=np.arange(3_000) % 3 == 0)
    assert len(exact_keys) == 0, "every allowed key was removed"


def test_removed_slots_are_reused() -> None:
    vectors, _ = clustered(2_000, seed=5)
    index = VectorIndex(DIM)
    keys = np.arange(1_000, dtype=np.uint64)
    index.upsert(keys, vectors[:1_000])
    for _ in range(3):  # churn: replace every item, twice over
        index.upsert(keys, vectors[1_000:])
        index.upsert(keys, vectors[:1_000])
    assert len(index) == 1_000
    assert index._used <= 2_000 + 64, "replacements reuse retired slots"
    found, _ = index.search(vectors[10], 1)
    assert found.tolist() == [10]


def test_repeated_key_in_one_call_keeps_the_last() -> None:
    vectors, _ = clustered(3, seed=6)
    index = VectorIndex(DIM)
    index.upsert(np.array([1, 1, 2], np.uint64), vectors)
    assert len(index) == 2
    keys, scores = index.search(vectors[1], 1)
    assert keys.tolist() == [1]
    assert scores[0] == pytest.approx(1.0, abs=1e-5)


def test_empty_index_and_k_beyond_len() -> None:
    index = VectorIndex(DIM)
    q = unit(np.ones((1, DIM), np.float32))[0]
    keys, scores = index.search(q, K)
    assert keys.dtype == np.uint64
    assert len(keys) == 0
    assert len(scores) == 0
    vectors, _ = clustered(4, seed=7)
    index.upsert(np.array([10, 20, 30, 40], np.uint64), vectors)
    keys, scores = index.search(q, 100)
    assert sorted(keys.tolist()) == [10, 20, 30, 40]
    assert np.all(np.diff(scores) <= 0)


def test_bad_input_is_refused() -> None:
    index = VectorIndex(DIM)
    with pytest.raises(InvalidInputError, match="shape"):
        index.upsert(np.array([1], np.uint64), np.ones((1, DIM + 1), np.float32))
    with pytest.raises(InvalidInputError, match="non-zero"):
        index.upsert(np.array([1], np.uint64), np.zeros((1, DIM), np.float32))
    with pytest.raises(InvalidInputError, match="keys for"):
        index.upsert(np.array([1, 2], np.uint64), np.ones((1, DIM), np.float32))
    with pytest.raises(InvalidInputError, match="k must be"):
        index.search(np.ones(DIM, np.float32), 0)
    with pytest.raises(InvalidInputError, match="boolean mask"):
        index.search(np.ones(DIM, np.float32), 1, allowed=np.array([1, 2]))  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path: Path) -> None:
    vectors, _ = clustered(5_000, seed=8)
    index = VectorIndex(DIM, exact_max_items=0, expansion_search=40)
    index.upsert(np.arange(5_000, dtype=np.uint64), vectors)
    index.remove(np.arange(0, 5_000, 7, dtype=np.uint64))
    path = tmp_path / "index.npz"
    index.save(path)
    restored = VectorIndex.load(path)
    assert len(restored) == len(index)
    assert restored.expansion_search == 40
    mask = np.random.default_rng(9).random(5_000) < 0.3
    for q in clustered(30, seed=10)[0]:
        for allowed in (None, mask):
            a, b = index.search(q, K, allowed=allowed), restored.search(q, K, allowed=allowed)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    # and it keeps working as an index, reusing the same retired slots
    for target in (index, restored):
        target.upsert(np.array([0, 5_001], np.uint64), vectors[:2])
        assert set(target.search(vectors[1], 2)[0].tolist()) == {1, 5_001}
    assert restored._used == index._used


def test_load_refuses_what_is_not_an_index(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(ArtifactFormatError):
        VectorIndex.load(path)
    (tmp_path / "junk").write_bytes(b"not a zip")
    with pytest.raises(ArtifactFormatError):
        VectorIndex.load(tmp_path / "junk")
    index = VectorIndex(DIM)
    index.upsert(np.arange(3, dtype=np.uint64), clustered(3, seed=13)[0])
    index.save(tmp_path / "index.npz")
    whole = (tmp_path / "index.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArtifactFormatError):
        VectorIndex.load(tmp_path / "cut.npz")
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "missing.npz")


def test_searches_during_writes_see_only_whole_items() -> None:
    vectors, _ = clustered(4_000, seed=11)
    index = VectorIndex(DIM, exact_max_items=500)
    index.upsert(np.arange(2_000, dtype=np.uint64), vectors[:2_000])
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        mask = np.zeros(4_000, np.bool_)
        mask[::4] = True
        try:
            while not stop.is_set():
                for allowed in (None, mask):
                    keys, scores = index.search(vectors[5], K, allowed=allowed)
                    assert len(keys) == K
                    assert np.all(np.diff(scores) <= 0)
                    assert keys.max() < 4_000
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=search) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for start in range(2_000, 4_000, 250):  # grows the arrays past 2,048 slots
            batch = np.arange(start, start + 250, dtype=np.uint64)
            index.upsert(batch, vectors[start : start + 250])
            index.remove(np.arange(start - 100, start, dtype=np.uint64))
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not errors, errors[0]
    assert len(index) == 4_000 - 2_000 // 250 * 100


def test_a_model_loads_after_an_index_was_built() -> None:
    # A fresh process builds an index, then loads ONNX Runtime: the order that can crash.
    code = (
        "import numpy as np; from models.ann import VectorIndex; "
        "VectorIndex(4).upsert(np.array([1], np.uint64), np.ones((1, 4), np.float32)); "
        "import onnxruntime; print(onnxruntime.get_device())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "CPU"
