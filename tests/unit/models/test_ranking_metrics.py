"""NDCG@k and capped recall@k on rankings computed by hand."""

from __future__ import annotations

import math

import pytest

from models.ranking_metrics import dcg, ndcg_at_k, recall_at_k


def test_dcg_discounts_by_log2_of_the_rank_plus_one() -> None:
    assert dcg([3, 2, 0, 1]) == pytest.approx(3 + 2 / math.log2(3) + 0 + 1 / math.log2(5))
    assert dcg([]) == 0


def test_ndcg_of_the_ideal_ranking_is_one() -> None:
    labels = {"a": 3, "b": 2, "c": 1}
    assert ndcg_at_k(["a", "b", "c"], labels) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b", "x", "c"], labels) < 1.0


def test_ndcg_by_hand() -> None:
    # ranked b (3), x (0), a (1); ideal b, a: DCG 3 + 1/2 = 3.5, ideal 3 + 1/log2(3)
    labels = {"a": 1, "b": 3}
    got = ndcg_at_k(["b", "x", "a"], labels)
    assert got == pytest.approx(3.5 / (3 + 1 / math.log2(3)))
    assert got == pytest.approx(0.9639, abs=1e-4)
    # swapped: a first
    assert ndcg_at_k(["a", "b"], labels) == pytest.approx((1 + 3 / math.log2(3)) / 3.6309, 1e-4)


def test_ndcg_looks_at_the_top_k_only() -> None:
    labels = {"z": 3}
    ranked = [f"x{i}" for i in range(10)] + ["z"]
    assert ndcg_at_k(ranked, labels, k=10) == 0.0
    assert ndcg_at_k(ranked, labels, k=11) == pytest.approx(1 / math.log2(12))


def test_ndcg_ideal_uses_the_best_k_of_all_labels() -> None:
    labels = {f"r{i}": 3 for i in range(20)}
    assert ndcg_at_k([f"r{i}" for i in range(10)], labels, k=10) == pytest.approx(1.0)
    half = [f"r{i}" for i in range(5)] + [f"x{i}" for i in range(5)]
    assert ndcg_at_k(half, labels, k=10) == pytest.approx(dcg([3] * 5) / dcg([3] * 10))


def test_a_repeated_item_counts_once() -> None:
    labels = {"a": 3, "b": 3}
    assert ndcg_at_k(["a", "a", "b"], labels) == pytest.approx(1.0)
    assert recall_at_k(["a", "a"], labels, k=2) == pytest.approx(0.5)


def test_grade_zero_and_no_labels_score_zero() -> None:
    assert ndcg_at_k(["a"], {"a": 0}) == 0.0
    assert ndcg_at_k(["a"], {}) == 0.0
    assert recall_at_k(["a"], {}) == 0.0
    assert recall_at_k(["a"], {"a": 0}) == 0.0


def test_recall_counts_strong_grades_out_of_at_most_k() -> None:
    labels = {"a": 3, "b": 2, "c": 1}
    assert recall_at_k(["c", "a", "x"], labels) == pytest.approx(1 / 2)  # c is only partial
    assert recall_at_k(["b", "a"], labels) == pytest.approx(1.0)
    many = {f"r{i}": 3 for i in range(40)}
    assert recall_at_k([f"r{i}" for i in range(10)], many, k=10) == pytest.approx(1.0)
    assert recall_at_k([f"r{i}" for i in range(4)], many, k=10) == pytest.approx(0.4)


def test_recall_with_binary_labels_counts_every_labelled_item() -> None:
    labels = {"a": 1, "b": 1, "c": 1, "d": 0}
    assert recall_at_k(["a", "d", "c"], labels) == pytest.approx(2 / 3)


@pytest.mark.parametrize("metric", [ndcg_at_k, recall_at_k])
def test_k_must_be_positive(metric: object) -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        metric(["a"], {"a": 1}, 0)  # type: ignore[operator]
