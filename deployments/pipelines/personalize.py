"""Personalized search: a search's best candidates reordered by what the user likes.

With `user` on `/v1/search`, the search takes `DEPTH` candidates instead of k, and each
candidate's score gains `weight` times the user's affinity share for its category plus
that for its brand (online features, one read). A user without history keeps the plain
ranking, as does every user while the feature store does not answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from deployments.pipelines.catalog_index import Hit
from models.recommender import Profile

DEPTH = 50  # candidates a personalized search reorders
# The affinities' weight against the search score (vector, BM25 or fused: 0 to 1),
# chosen on the example catalog's interactions, on test users 1000-1999 (`python
# bench/eval_recommend.py --offset 1000 --weights ...`): NDCG@10 0.0090 plain, 0.0144 at
# 0.3, 0.0199 at 1, 0.0222 at 5. At 1 the search's own score still counts as much as a
# full category affinity; beyond, the candidates are all but sorted by affinity.
AFFINITY_WEIGHT = 1.0


def depth(k: int, personal: bool) -> int:
    """How many candidates a search takes: k, or `DEPTH` to reorder."""
    return max(k, DEPTH) if personal else k


def affinity(hit: Hit, profile: Profile) -> float:
    """The user's share for the item's category plus that for its brand (0 to 2)."""
    attrs = {**hit.item.text, **hit.item.attributes}
    return profile.categories.get(str(attrs.get("category", "")), 0.0) + profile.brands.get(
        str(attrs.get("brand", "")), 0.0
    )


def personalize(
    hits: Sequence[Hit],
    profile: Profile,
    k: int,
    weight: float = AFFINITY_WEIGHT,
    score_top: float = 1.0,
) -> list[Hit]:
    """The k best of `hits` once each gains `weight` x its affinity (stable: equal
    scores keep the search's order). `score_top`: the highest score the search gives
    (1 for vectors and convex fusion; reciprocal rank fusion's is about 0.033), by which
    the scores are divided first, so the affinity weighs the same against either."""
    if profile.cold or weight == 0:
        return list(hits[:k])
    rescored = [Hit(h.item, h.score / score_top + weight * affinity(h, profile)) for h in hits]
    order = sorted(range(len(rescored)), key=lambda n: -rescored[n].score)
    return [rescored[n] for n in order[:k]]
