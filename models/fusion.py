"""Rank fusion for hybrid search: a query's vector ranking and lexical ranking become one.

`convex`, a weighted sum of min-max normalised scores, is what search uses by default:
it keeps the score gaps that ranks ignore (an exact SKU far ahead in BM25 stays ahead);
its weight was chosen on the dev queries of `make eval`. `rrf`, reciprocal rank fusion
(Cormack, Clarke and Büttcher, SIGIR 2009), reads ranks only, so cosine similarities
and BM25 scores, whose scales differ from query to query, need no calibration; it
ranked lower in `make eval`.

Both break ties the same way: the item seen first when the input lists are read rank by
rank (rank 1 of every list, in list order, then rank 2, ...) comes first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _first_seen(rankings: Sequence[Sequence[int]]) -> dict[int, int]:
    """Each item's position when the lists are read rank by rank (the tie-break)."""
    seen: dict[int, int] = {}
    for rank in range(max((len(r) for r in rankings), default=0)):
        for ranking in rankings:
            if rank < len(ranking):
                seen.setdefault(ranking[rank], len(seen))
    return seen


def _best(scores: dict[int, float], seen: dict[int, int], k: int) -> list[tuple[int, float]]:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    order = sorted(scores, key=lambda item: (-scores[item], seen[item]))
    return [(item, scores[item]) for item in order[:k]]


def rrf_top(lists: int = 2, k_rrf: int = 60) -> float:
    """The highest score `rrf` gives (an item first in each of `lists` rankings, weights
    1): what maps its scores onto about 0 to 1."""
    return lists / (k_rrf + 1)


def rrf(
    rankings: Sequence[Sequence[int]],
    k: int,
    k_rrf: int = 60,
    weights: Sequence[float] | None = None,
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: the `k` items with the highest
    `sum(weights[i] / (k_rrf + rank_i))` over the rankings that hold them (ranks from 1;
    an item repeated in one ranking counts at its best rank), best first. `k_rrf` damps
    the advantage of the very top ranks (60 is the paper's value); `weights` (default
    all 1) favour one ranking over another."""
    if k_rrf < 0:
        raise ValueError(f"k_rrf must be >= 0, got {k_rrf}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if any(not (math.isfinite(w) and w >= 0) for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        counted: set[int] = set()
        for rank, item in enumerate(ranking, start=1):
            if item not in counted:
                counted.add(item)
                scores[item] = scores.get(item, 0.0) + weight / (k_rrf + rank)
    return _best(scores, _first_seen(rankings), k)


def _min_max(results: Sequence[tuple[int, float]]) -> dict[int, float]:
    """Scores mapped onto [0, 1] (all 1 when they are equal); an item's best score counts."""
    best: dict[int, float] = {}
    for item, score in results:
        if not math.isfinite(score):
            raise ValueError(f"score of item {item} is not finite: {score}")
        best[item] = max(score, best.get(item, -math.inf))
    if not best:
        return {}
    low, high = min(best.values()), max(best.values())
    span = high - low
    return {item: (s - low) / span if span > 0 else 1.0 for item, s in best.items()}


def convex(
    vector: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    alpha: float = 0.5,
    k: int | None = None,
) -> list[tuple[int, float]]:
    """Convex combination `alpha * vector + (1 - alpha) * lexical` of min-max normalised
    scores (an item missing from one list gets 0 from it), best first; the `k` best, or
    all when `k` is None. Inputs are (item, score) lists, higher scores better."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    vec, lex = _min_max(vector), _min_max(lexical)
    scores = {
        item: alpha * vec.get(item, 0.0) + (1 - alpha) * lex.get(item, 0.0)
        for item in vec.keys() | lex.keys()
    }
    seen = _first_seen([[item for item, _ in vector], [item for item, _ in lexical]])
    return _best(scores, seen, len(scores) if k is None else k)
