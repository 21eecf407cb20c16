"""Rank fusion: reciprocal rank fusion (the default) and the convex combination."""

from __future__ import annotations

import pytest

from models.fusion import convex, rrf


def test_rrf_item_first_in_both_rankings_is_first() -> None:
    fused = rrf([[7, 1, 2, 3], [7, 3, 2, 9]], k=10)
    assert fused[0][0] == 7
    assert fused[0][1] == pytest.approx(2 / 61)


def test_rrf_scores_are_reciprocal_ranks() -> None:
    fused = dict(rrf([[1, 2], [2, 3]], k=10, k_rrf=10))
    assert fused == pytest.approx({1: 1 / 11, 2: 1 / 12 + 1 / 11, 3: 1 / 12})


def test_rrf_item_in_both_lists_beats_one_list_top() -> None:
    assert [item for item, _ in rrf([[1, 2], [3, 2]], k=3)] == [2, 1, 3]


def test_rrf_ties_go_to_the_item_seen_first_rank_by_rank() -> None:
    # 1 and 3 tie (rank 1 once each), as do 2 and 4 (rank 2 once each)
    assert [item for item, _ in rrf([[1, 2], [3, 4]], k=4)] == [1, 3, 2, 4]
    assert [item for item, _ in rrf([[3, 4], [1, 2]], k=4)] == [3, 1, 4, 2]


def test_rrf_weights_favour_one_ranking() -> None:
    assert rrf([[1, 2], [2, 1]], k=1)[0][0] == 1  # a tie: first seen
    assert rrf([[1, 2], [2, 1]], k=1, weights=[1.0, 2.0])[0][0] == 2
    assert rrf([[1, 2], [3, 4]], k=4, weights=[0.0, 1.0])[0][0] == 3


def test_rrf_truncates_to_k() -> None:
    assert len(rrf([list(range(50)), list(range(50, 100))], k=5)) == 5
    assert rrf([[1, 2]], k=0) == []
    assert len(rrf([[1, 2]], k=10)) == 2


def test_rrf_repeated_item_counts_once_at_its_best_rank() -> None:
    assert dict(rrf([[1, 1, 2]], k=5, k_rrf=0)) == pytest.approx({1: 1.0, 2: 1 / 3})


def test_rrf_of_nothing() -> None:
    assert rrf([], k=3) == []
    assert rrf([[], []], k=3) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": [1.0]}, "1 weights for 2 rankings"),
        ({"weights": [1.0, -1.0]}, "finite and >= 0"),
        ({"weights": [1.0, float("nan")]}, "finite and >= 0"),
        ({"k_rrf": -1}, "k_rrf must be >= 0"),
        ({"k": -1}, "k must be >= 0"),
    ],
)
def test_rrf_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"k": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        rrf([[1], [2]], **args)  # type: ignore[arg-type]


def test_convex_normalises_each_list() -> None:
    vector = [(1, 0.9), (2, 0.5), (3, 0.1)]  # cosine
    lexical = [(3, 30.0), (2, 20.0), (4, 10.0)]  # BM25
    fused = dict(convex(vector, lexical, alpha=0.5))
    assert fused == pytest.approx({1: 0.5, 2: 0.25 + 0.25, 3: 0.5, 4: 0.0})


def test_convex_alpha_picks_a_side() -> None:
    vector, lexical = [(1, 0.9), (2, 0.1)], [(2, 5.0), (1, 1.0)]
    assert convex(vector, lexical, alpha=1.0)[0][0] == 1
    assert convex(vector, lexical, alpha=0.0)[0][0] == 2


def test_convex_ties_single_lists_and_k() -> None:
    # equal scores normalise to 1; a tie goes to the item seen first (vector's first)
    assert [item for item, _ in convex([(1, 0.5)], [(2, 3.0)])] == [1, 2]
    [(item, score)] = convex([], [(5, 2.0), (6, 1.0)], alpha=0.3, k=1)
    assert item == 5
    assert score == pytest.approx(0.7)
    assert convex([], []) == []


def test_convex_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        convex([(1, 1.0)], [], alpha=1.5)
    with pytest.raises(ValueError, match="not finite"):
        convex([(1, float("inf"))], [])
