"""The recommender's serving-time pieces: what it reads of the online features, the
ranker's features, and a ranker fitted to a signal it can find."""

from __future__ import annotations

import math

import numpy as np

from models.recommender import RANK_FEATURES, ItemStats, Profile, Ranker, rank_features
from models.recommender_offline import fit_logistic
from stores.catalog import Item

VIEW = {
    "user_activity": {
        "recent_items": ["a", "b"],
        "recent_purchases": ["z"],
        "views": 4,
        "clicks": 2,
        "add_to_carts": 0,
        "purchases": 1,
        "category_affinity": {"shoes": 0.75, "hats": 0.25},
        "brand_affinity": {"Acme": 1.0},
    }
}


def test_a_profile_reads_the_shipped_user_view() -> None:
    profile = Profile.from_features(VIEW)
    assert profile.recent == ["a", "b"]
    assert profile.counts == {"view": 4, "click": 2, "add_to_cart": 0, "purchase": 1}
    assert profile.categories == {"shoes": 0.75, "hats": 0.25}
    assert not profile.cold
    assert profile.seen(VIEW) == {"a", "b", "z"}
    assert Profile.from_features({"user_activity": {"recent_items": [], "views": 0}}).cold


def test_rank_features_describe_each_candidate() -> None:
    profile = Profile.from_features(VIEW)
    now = 1_800_000_000.0
    items = [
        Item("a", {"title": "boot", "brand": "Acme"}, {"category": "shoes", "price": 100.0}),
        Item("n", {"title": "cap"}, {"category": "hats", "brand": "Other", "price": "n/a"}),
    ]
    stats = [ItemStats(12.0, now - 7 * 86_400), ItemStats()]
    rows = rank_features([0.9, 0.1], items, stats, profile, [100.0, "free"], now)
    assert rows.shape == (2, len(RANK_FEATURES))
    first = dict(zip(RANK_FEATURES, rows[0].tolist(), strict=True))
    assert math.isclose(first["tower_score"], 0.9, rel_tol=1e-6)
    assert math.isclose(first["popularity"], math.log1p(12.0), rel_tol=1e-6)
    assert math.isclose(first["recency"], math.exp(-1), rel_tol=1e-5)
    assert first["category_affinity"] == 0.75
    assert first["brand_affinity"] == 1.0  # the brand text field counts
    assert first["price_distance"] == 0.0
    assert first["seen"] == 1.0
    second = dict(zip(RANK_FEATURES, rows[1].tolist(), strict=True))
    assert second["recency"] == 0.0  # no events
    assert second["price_distance"] == 0.0  # no price to compare
    assert second["category_affinity"] == 0.25
    assert second["seen"] == 0.0


def test_the_ranker_learns_a_signal_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, len(RANK_FEATURES))).astype(np.float32)
    y = (x[:, 1] + 0.2 * rng.normal(size=4000) > 0.5).astype(np.float32)
    ranker = fit_logistic(x, y)
    assert int(np.argmax(np.abs(ranker.weights))) == 1
    scores = ranker.score(x)
    assert float(scores[y == 1].mean()) > float(scores[y == 0].mean()) + 0.3
    again = Ranker(
        np.asarray(ranker.to_json()["weights"], np.float32),
        ranker.to_json()["bias"],
        np.asarray(ranker.to_json()["mean"], np.float32),
        np.asarray(ranker.to_json()["scale"], np.float32),
    )
    assert np.allclose(again.score(x), scores, atol=1e-6)
