"""Ranking quality of one query's results against graded relevance labels.

Grades are whole numbers, 0 (not relevant; also every item a query does not list) to 3.

- NDCG@k: `DCG / ideal DCG`, with `DCG = sum(grade_i / log2(i + 1))` over ranks
  i = 1..k (linear gain, as trec_eval and BEIR compute it); the ideal orders every
  labelled item by grade. 1.0: no better top k exists.
- recall@k: the share of the relevant items in the top k, out of at most k (capped
  recall, so a query with a thousand relevant items can still reach 1.0). Relevant:
  grade 2 or more, or every labelled item when the query grades none above 1 (binary
  labels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

STRONG_GRADE = 2


def dcg(grades: Sequence[int]) -> float:
    """Discounted cumulative gain of grades in rank order."""
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(grades, start=1))


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """NDCG@k of a ranking (item ids, best first); 0.0 when nothing is relevant."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ideal = dcg(sorted((g for g in relevant.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([relevant.get(item, 0) for item in _distinct(ranked)[:k]]) / ideal


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Capped recall@k (see the module docstring); 0.0 when nothing is relevant."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    floor = STRONG_GRADE if any(g >= STRONG_GRADE for g in relevant.values()) else 1
    wanted = {item for item, g in relevant.items() if g >= floor}
    if not wanted:
        return 0.0
    found = sum(1 for item in _distinct(ranked)[:k] if item in wanted)
    return found / min(k, len(wanted))


def _distinct(ranked: Sequence[str]) -> list[str]:
    """Ids in order, repeats dropped: an item counts once, at its best rank."""
    return list(dict.fromkeys(ranked))
