"""The search evaluation end to end on a small example catalog: the service's catalog
index in three modes, a hashed bag-of-words embedder standing in for a model version,
the embedding cache, labels checked against the catalog, the command's report."""

from __future__ import annotations

import functools
import json
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bench.eval import Space, check_labels, evaluate, main, paired_difference, table
from deployments.pipelines.catalog_index import CONVEX_ALPHA
from models.example_catalog import Catalog, generate
from models.example_queries import Query, make_queries
from models.lexical import tokenize
from stores.catalog import Item

ITEMS = 1200
DIM = 64


@functools.cache
def catalog() -> Catalog:
    return generate(ITEMS, seed=0)


@functools.cache
def queries() -> list[Query]:
    return [q for q in make_queries(catalog(), 120, seed=0) if q.split == "test"]


class HashedWords:
    """Each word stem adds to one of DIM dimensions: a crude, deterministic embedder."""

    def __init__(self) -> None:
        self.texts = 0

    def __call__(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.texts += len(texts)
        out = np.zeros((len(texts), DIM), np.float32)
        for row, text in enumerate(texts):
            for term in tokenize(text):
                out[row, zlib.crc32(term.encode()) % DIM] += 1.0
        out[out.sum(axis=1) == 0, 0] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def rows_by_key(result: dict[str, object]) -> dict[tuple[str, str], dict[str, object]]:
    return {(r["mode"], r["version"]): r for r in result["rows"]}  # type: ignore[attr-defined,index]


def test_every_mode_is_scored_per_version_and_the_cache_skips_item_embedding(
    tmp_path: Path,
) -> None:
    embed = HashedWords()
    space = Space("fake/v1", embed, cache_key="ab" * 32)
    first = evaluate(catalog().items, queries(), [space], "convex", tmp_path, log=lambda _: None)
    assert embed.texts == ITEMS + len(queries())
    rows = rows_by_key(first)
    assert set(rows) == {("lexical", "-"), ("vector", "fake/v1"), ("hybrid", "fake/v1")}
    for row in rows.values():
        assert row["queries"] == len(queries())
        assert 0.0 <= row["ndcg@10"] <= 1.0  # type: ignore[operator]
        assert 0.0 <= row["recall@10"] <= 1.0  # type: ignore[operator]
    # BM25 finds model numbers; the crude embedder does not separate them as well
    by_kind = {key: row["ndcg@10_by_kind"] for key, row in rows.items()}
    assert by_kind["lexical", "-"]["code"] > 0.9  # type: ignore[index]
    assert by_kind["lexical", "-"]["code"] > by_kind["vector", "fake/v1"]["code"]  # type: ignore[index]
    assert rows["hybrid", "fake/v1"]["ndcg@10"] > 0.3  # type: ignore[operator]

    names = {(c["a"], c["b"]) for c in first["comparisons"]}
    assert names == {
        (f"hybrid fake/v1 convex {CONVEX_ALPHA:g}", "lexical"),
        (f"hybrid fake/v1 convex {CONVEX_ALPHA:g}", "vector fake/v1"),
    }

    again = HashedWords()
    second = evaluate(
        catalog().items,
        queries(),
        [Space("fake/v1", again, "ab" * 32)],
        "convex",
        tmp_path,
        log=lambda _: None,
    )
    assert again.texts == len(queries())  # the items' vectors came from the cache
    assert second["rows"] == first["rows"]


def test_a_changed_catalog_misses_the_cache(tmp_path: Path) -> None:
    space = Space("fake/v1", HashedWords(), cache_key="cd" * 32)
    items = catalog().items[:300]
    evaluate(items, [], [space], "convex", tmp_path, modes=("vector",), log=lambda _: None)
    changed = [Item(items[0].id, {"title": "something else"}), *items[1:]]
    embed = HashedWords()
    evaluate(
        changed,
        [],
        [Space("fake/v1", embed, "cd" * 32)],
        "convex",
        tmp_path,
        modes=("vector",),
        log=lambda _: None,
    )
    assert embed.texts == len(changed)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_rrf_fusion_is_scored_too() -> None:
    space = Space("fake/v1", HashedWords())
    result = evaluate(
        catalog().items, queries()[:20], [space], "rrf", None, ("hybrid",), log=lambda _: None
    )
    assert [(r["mode"], r["version"], r["fusion"]) for r in result["rows"]] == [
        ("hybrid", "fake/v1", "rrf")
    ]


def test_the_convex_weight_can_be_swept() -> None:
    space = Space("fake/v1", HashedWords())
    code = [q for q in queries() if q.kind == "code"]
    result = evaluate(
        catalog().items, code, [space], "convex", None, ("hybrid",), lambda _: None, (0, 0.5, 1)
    )
    by_fusion = {r["fusion"]: r["ndcg@10"] for r in result["rows"]}
    assert set(by_fusion) == {"convex 0", "convex 0.5", "convex 1"}
    assert by_fusion["convex 0"] > 0.9  # the lexical half alone finds model numbers
    assert by_fusion["convex 1"] < by_fusion["convex 0"]


def test_labels_of_missing_items_are_refused() -> None:
    items = catalog().items[:10]
    with pytest.raises(ValueError, match=r"'q1' grades 1 item.*'nope'"):
        check_labels(items, [Query("q1", "x", {items[0].id: 3, "nope": 1})])
    with pytest.raises(ValueError, match="grades no item above 0"):
        check_labels(items, [Query("q1", "x", {items[0].id: 0})])


def test_the_table_has_a_row_per_mode_and_version() -> None:
    rows = [
        {
            "mode": "hybrid",
            "version": "m/v1",
            "fusion": "convex 0.5",
            "ndcg@10": 0.5,
            "recall@10": 0.25,
            "ndcg@10_by_kind": {"code": 1.0},
        },
        {
            "mode": "lexical",
            "version": "-",
            "fusion": "-",
            "ndcg@10": 0.4,
            "recall@10": 0.2,
            "ndcg@10_by_kind": {"code": 0.9},
        },
    ]
    assert table(rows).splitlines() == [
        "| mode | version | fusion | NDCG@10 | recall@10 | code NDCG |",
        "|---|---|---|---|---|---|",
        "| lexical | - | - | 0.400 | 0.200 | 0.900 |",
        "| hybrid | m/v1 | convex 0.5 | 0.500 | 0.250 | 1.000 |",
    ]


def test_the_command_scores_a_query_file_lexically(tmp_path: Path) -> None:
    data, out = tmp_path / "catalog", tmp_path / "eval.json"
    mine = tmp_path / "mine.jsonl"
    mine.write_text(
        json.dumps(
            {
                "id": "m1",
                "query": catalog().products[0].code,
                "relevant": {
                    p.item.id: 3 for p in catalog().products if p.code == catalog().products[0].code
                },
            }
        )
        + "\n"
    )
    argv = ["--items", str(ITEMS), "--modes", "lexical", "--data-dir", str(data), "--out", str(out)]
    assert main([*argv, "--queries", str(mine)]) == 0
    report = json.loads(out.read_text())
    assert report["queries"] == {"split": "test", "count": 1, "file": str(mine)}
    assert report["rows"][0]["ndcg@10"] == pytest.approx(1.0)
    assert (data / "products.jsonl").is_file()
    assert (data / "queries.jsonl").is_file()
    assert report["catalog"]["items"] == ITEMS


def test_paired_differences_come_with_a_bootstrap_interval() -> None:
    assert paired_difference([0.5, 0.7], [0.5, 0.7]) == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert paired_difference([0.6, 0.8], [0.5, 0.7]) == pytest.approx(
        {"mean": 0.1, "low": 0.1, "high": 0.1}
    )
    gains = [1.0] * 30 + [0.0] * 70  # hybrid better on 30 queries of 100
    better = paired_difference(gains, [0.0] * 100)
    assert better["mean"] == pytest.approx(0.3)
    assert 0.15 < better["low"] < 0.3 < better["high"] < 0.45
    noise = paired_difference([1.0, 0.0] * 50, [0.0, 1.0] * 50)  # as often better as worse
    assert noise["low"] < 0 < noise["high"]
    assert paired_difference([], []) == {"mean": 0.0, "low": 0.0, "high": 0.0}
