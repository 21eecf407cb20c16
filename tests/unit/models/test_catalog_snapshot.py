"""Catalog snapshots: written and read back whole, searched like the vectors they hold,
refused when they are something else."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from models import ArtifactRef, ArtifactStore
from models.catalog_snapshot import read_snapshot, texts_hash, write_snapshot
from models.errors import ArtifactChecksumError, ArtifactFormatError
from stores.catalog import Item

SHA = "ab" * 32


def _items(n: int) -> list[Item]:
    return [Item(f"sku-{i}", {"title": f"item {i}"}, {"price": i, "tags": ["x"]}) for i in range(n)]


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_snapshot_reads_back_and_searches_like_exact(tmp_path: Path) -> None:
    items, vectors = _items(2000), _vectors(2000)
    path = tmp_path / "shop.index"
    digest = write_snapshot(path, items, {"m/v1": (SHA, vectors)}, threads=1)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    snap = read_snapshot(path)
    assert snap.items == items
    assert snap.texts_sha256 == texts_hash(items)
    space = snap.spaces["m/v1"]
    assert space.model_sha256 == SHA
    hits = 0
    for q in _vectors(50, seed=1):
        keys, _ = space.index.search(q, 10)
        exact = np.argsort(-(vectors @ q))[:10]
        hits += len(set(keys.tolist()) & set(exact.tolist()))
    assert hits / 500 >= 0.95
    blobs = snap.vectors_bytes("m/v1")
    assert np.allclose(np.frombuffer(blobs["sku-7"], np.float32), vectors[7], atol=1e-6)


def test_bad_snapshots_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one item"):
        write_snapshot(tmp_path / "x", [], {})
    with pytest.raises(ValueError, match="repeat"):
        write_snapshot(tmp_path / "x", _items(2) * 2, {})
    with pytest.raises(ValueError, match="3 vectors for 2 items"):
        write_snapshot(tmp_path / "x", _items(2), {"m/v1": (SHA, _vectors(3))})
    not_one = tmp_path / "other.npz"
    np.savez(not_one, meta=np.frombuffer(b'{"format": "else"}', np.uint8))
    with pytest.raises(ArtifactFormatError, match="not a catalog snapshot"):
        read_snapshot(not_one)
    (tmp_path / "text").write_text("hello")
    with pytest.raises(ArtifactFormatError):
        read_snapshot(tmp_path / "text")


def test_the_artifact_store_verifies_a_snapshot_file(tmp_path: Path) -> None:
    path = tmp_path / "shop.index"
    digest = write_snapshot(path, _items(10), {"m/v1": (SHA, _vectors(10))}, threads=1)
    store = ArtifactStore(cache_dir=tmp_path / "cache")
    local = store.fetch_file(ArtifactRef(str(path), digest), ".snapshot")
    assert local.read_bytes() == path.read_bytes()
    assert store.fetch_file(ArtifactRef(str(path), digest), ".snapshot") == local  # cached
    with pytest.raises(ArtifactChecksumError, match="checksum mismatch"):
        store.fetch_file(ArtifactRef(str(path), "cd" * 32))
    assert not list((tmp_path / "cache").glob(".partial-*"))


def test_a_declared_snapshot_is_fetched_and_checked(tmp_path: Path) -> None:
    from configs.schema import AppArgs
    from deployments.pipelines.wiring import snapshot_sources

    path = tmp_path / "shop.index"
    digest = write_snapshot(path, _items(5), {"m/v1": (SHA, _vectors(5))}, threads=1)
    version = {"artifact": {"uri": "m.tar", "sha256": SHA}, "runtime": "onnx"}

    def args(sha: str) -> AppArgs:
        return AppArgs.model_validate(
            {
                "models": {"m": {"versions": {"v1": version}}},
                "artifact_cache_dir": str(tmp_path / "cache"),
                "search": {"snapshots": [{"tenant_id": "acme", "catalog": "shop",
                                          "artifact": {"uri": str(path), "sha256": sha}}]},
            }
        )  # fmt: skip

    ((tenant, catalog, load),) = snapshot_sources(args(digest))
    assert (tenant, catalog) == ("acme", "shop")
    assert [i.id for i in load().items] == [f"sku-{i}" for i in range(5)]
    ((_, _, bad),) = snapshot_sources(args("cd" * 32))
    with pytest.raises(ArtifactChecksumError):
        bad()
