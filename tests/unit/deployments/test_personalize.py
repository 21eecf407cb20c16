"""Personalized search's reordering: affinities lift an item, a user without history and
a zero weight leave the search's order."""

from __future__ import annotations

from deployments.pipelines.catalog_index import Hit
from deployments.pipelines.personalize import depth, personalize
from models.recommender import Profile
from stores.catalog import Item


def _hit(item_id: str, category: str, brand: str, score: float) -> Hit:
    return Hit(Item(item_id, {"title": item_id, "brand": brand}, {"category": category}), score)


HITS = [
    _hit("a", "socks", "Woolly", 0.90),
    _hit("b", "hats", "Other", 0.80),
    _hit("c", "hats", "Hatters", 0.70),
    _hit("d", "mugs", "Clay", 0.69),
]


def test_affinities_lift_what_the_user_likes() -> None:
    profile = Profile(["x"], {"hats": 0.8, "mugs": 0.2}, {"Hatters": 1.0}, {"purchase": 1})
    got = personalize(HITS, profile, 3, weight=0.3)
    assert [h.item.id for h in got] == ["c", "b", "a"]
    assert abs(got[0].score - (0.70 + 0.3 * 1.8)) < 1e-9


def test_no_history_or_no_weight_keeps_the_order() -> None:
    assert [h.item.id for h in personalize(HITS, Profile(), 2)] == ["a", "b"]
    liked = Profile(["x"], {"hats": 1.0}, {}, {"view": 1})
    assert [h.item.id for h in personalize(HITS, liked, 4, weight=0)] == ["a", "b", "c", "d"]


def test_a_personal_search_takes_more_candidates() -> None:
    assert depth(10, False) == 10
    assert depth(10, True) == 50
    assert depth(80, True) == 80


def test_reciprocal_rank_scores_weigh_as_convex_ones_do() -> None:
    """Fused by reciprocal ranks, the best score is about 0.033: added as is, a small
    affinity for the last candidate's category beat the search's clear first. Scaled by
    the fusion's top score, the same hits reorder as their convex scores would."""
    from models.fusion import rrf_top

    top = rrf_top()
    assert abs(top - 2 / 61) < 1e-12
    fused = [_hit(h.item.id, h.item.attributes["category"], h.item.text["brand"], h.score * top)
             for h in HITS]  # fmt: skip
    slight = Profile(["x"], {"mugs": 0.15}, {}, {"view": 1})
    assert personalize(fused, slight, 4)[0].item.id == "d"  # unscaled
    scaled = personalize(fused, slight, 4, score_top=top)
    assert [h.item.id for h in scaled] == [h.item.id for h in personalize(HITS, slight, 4)]
    assert scaled[0].item.id == "a"
