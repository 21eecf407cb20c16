"""A recommender version at serving time: the two towers (ONNX) and the ranker, loaded
from one package, with no Ray and no HTTP.

- `item_vectors(items)`: the item tower's vectors, what a catalog's index of this
  version holds (an item nobody has touched is reachable through its content).
- `user_vector(profile, history)`: the user tower's vector from the online features.
- `rank(candidates)`: the ranker's score of each candidate from its features (the towers'
  score, the item's popularity and recency, the user's affinities to its category and
  brand, its price against the user's), a logistic regression trained offline.

The package (`python -m models.recommender_build`) holds `item_tower.onnx`,
`user_tower.onnx`, `ranker.json` and `servekit-model.json` (task `recommendation`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from models.two_tower import ACTIVITY, DIM, ItemInputs, UserInputs, user_inputs
from stores.catalog import Item

F32 = npt.NDArray[np.float32]
RANKER_FILE = "ranker.json"
# The ranker's inputs, in its weights' order.
RANK_FEATURES = (
    "tower_score",
    "popularity",  # log1p of the item's weighted events
    "recency",  # exp(-days since the item's last event / 7); 0 without events
    "category_affinity",  # the user's share for the item's category
    "brand_affinity",
    "price_distance",  # |log1p(price) - the user's mean log1p(price)|; 0 without history
    "seen",  # the user touched it recently
)
RECENCY_DAYS = 7.0


@dataclass
class Profile:
    """What the user tower and the ranker read of one user's online features."""

    recent: list[str] = field(default_factory=list)  # item ids, newest first
    categories: dict[str, float] = field(default_factory=dict)  # affinity shares
    brands: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # by event type

    @property
    def cold(self) -> bool:
        """No history: nothing to personalise from."""
        return not self.recent and not any(self.counts.values())

    @classmethod
    def from_features(cls, views: Mapping[str, Mapping[str, Any]]) -> Profile:
        """From the `user_activity` view of the shipped feature definitions."""
        view = views.get("user_activity", {})
        recent = [str(i) for i in view.get("recent_items") or []]
        counts = {
            "view": view.get("views", 0),
            "click": view.get("clicks", 0),
            "add_to_cart": view.get("add_to_carts", 0),
            "purchase": view.get("purchases", 0),
        }
        return cls(
            recent,
            dict(view.get("category_affinity") or {}),
            dict(view.get("brand_affinity") or {}),
            {k: int(v) for k, v in counts.items() if isinstance(v, int | float)},
        )

    def seen(self, views: Mapping[str, Mapping[str, Any]] | None = None) -> set[str]:
        """Items the user touched recently (every recent list of the view)."""
        out = set(self.recent)
        for name, value in (views or {}).get("user_activity", {}).items():
            if name.startswith("recent_") and isinstance(value, list):
                out.update(str(v) for v in value)
        return out


class ItemStats(NamedTuple):
    """What the online store knows of one item (the `item_popularity` view); a named
    tuple, made 150 times a request, for its cheap construction."""

    weighted_events: float = 0.0
    last_event_at: float = 0.0


@dataclass(frozen=True)
class Ranker:
    """Logistic regression over `RANK_FEATURES`, standardised by the training means."""

    weights: F32
    bias: float
    mean: F32
    scale: F32

    @classmethod
    def read(cls, path: Path) -> Ranker:
        """From `ranker.json`."""
        data = json.loads(path.read_text())
        if tuple(data["features"]) != RANK_FEATURES:
            raise ValueError(f"{path.name}: features {data['features']} are not {RANK_FEATURES}")
        return cls(
            np.asarray(data["weights"], np.float32),
            float(data["bias"]),
            np.asarray(data["mean"], np.float32),
            np.asarray(data["scale"], np.float32),
        )

    def to_json(self) -> dict[str, Any]:
        """What `ranker.json` holds."""
        return {
            "model": "logistic-regression",
            "features": list(RANK_FEATURES),
            "weights": [float(w) for w in self.weights],
            "bias": self.bias,
            "mean": [float(m) for m in self.mean],
            "scale": [float(s) for s in self.scale],
        }

    def score(self, features: F32) -> F32:
        """The probability of an interaction, one per row of `features`."""
        z = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-z)), np.float32)


def rank_features(
    tower_scores: Sequence[float],
    items: Sequence[Item],
    stats: Sequence[ItemStats],
    profile: Profile,
    recent_prices: Sequence[Any],
    now: float,
) -> F32:
    """The ranker's inputs for each candidate (rows in `RANK_FEATURES` order);
    `recent_prices`: the prices of the user's recent items (non-numbers are skipped).
    A request ranks 150 candidates: what each needs of its item is read in one pass."""
    n = len(items)
    out = np.zeros((n, len(RANK_FEATURES)), np.float32)
    if not n:
        return out
    out[:, 0] = tower_scores
    weighted = np.fromiter((s.weighted_events for s in stats), np.float64, n)
    out[:, 1] = np.log1p(np.maximum(weighted, 0.0))
    last = np.fromiter((s.last_event_at for s in stats), np.float64, n)
    days = np.maximum((now - last) / 86_400, 0.0)
    out[:, 2] = np.where(last > 0, np.exp(-days / RECENCY_DAYS), 0.0)
    categories, brands, seen = profile.categories, profile.brands, set(profile.recent)
    category, brand, price, priced, touched = [], [], [], [], []
    for item in items:
        category.append(categories.get(str(_attr(item, "category")), 0.0))
        brand.append(brands.get(str(_attr(item, "brand")), 0.0))
        value = _attr(item, "price")
        priced.append(_is_number(value))
        price.append(_log_price(value))
        touched.append(1.0 if item.id in seen else 0.0)
    out[:, 3] = category
    out[:, 4] = brand
    prices = [_log_price(p) for p in recent_prices if _is_number(p)]
    if prices:
        mine = np.array(price, np.float64)
        out[:, 5] = np.where(np.array(priced, np.bool_), np.abs(mine - float(np.mean(prices))), 0.0)
    out[:, 6] = touched
    return out


def _attr(item: Item, name: str) -> Any:
    """An attribute, else the text field of that name (the example's `brand`), else ''."""
    value = item.attributes.get(name)
    return item.text.get(name, "") if value is None else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _log_price(value: Any) -> float:
    return math.log1p(max(0.0, float(value))) if _is_number(value) else 0.0


class Recommender:
    """One loaded recommender version."""

    def __init__(self, package_dir: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.dir = package_dir
        self._item = ort.InferenceSession(str(package_dir / "item_tower.onnx"), options,
                                          providers=providers)  # fmt: skip
        self._user = ort.InferenceSession(str(package_dir / "user_tower.onnx"), options,
                                          providers=providers)  # fmt: skip
        self.ranker = Ranker.read(package_dir / RANKER_FILE)
        # One run at a time per session keeps ONNX Runtime's thread use bounded; a
        # request's user tower never waits for a backfill's item batch.
        self._item_lock = threading.Lock()
        self._user_lock = threading.Lock()

    @property
    def dim(self) -> int:
        """Length of the towers' vectors."""
        return DIM

    def item_vectors(self, items: Sequence[Item]) -> F32:
        """Unit item vectors, one row per item."""
        if not items:
            return np.zeros((0, DIM), np.float32)
        inputs = ItemInputs.of(items)
        feeds = {"tokens": inputs.tokens, "category": inputs.category, "brand": inputs.brand,
                 "price": inputs.price}  # fmt: skip
        with self._item_lock:
            (out,) = self._item.run(None, feeds)
        return np.asarray(out, np.float32)

    def user_vector(self, profile: Profile, history: F32) -> F32:
        """The user's unit vector; `history`: the item vectors of the recent items this
        version's index has (none: zeros)."""
        hist = history.mean(0, keepdims=True) if len(history) else np.zeros((1, DIM), np.float32)
        counts = {kind: profile.counts.get(kind, 0) for kind in ACTIVITY}
        u = user_inputs([(profile.categories, profile.brands, counts)])
        return np.asarray(self.user_vectors(hist, u)[0], np.float32)

    def user_vectors(self, history: F32, users: UserInputs) -> F32:
        """Unit user vectors in one run: `history` (n, DIM) the mean vectors of each
        user's recent items, `users` the other inputs row by row."""
        feeds = {"history": history.astype(np.float32), "categories": users.categories,
                 "category_weights": users.category_weights, "brands": users.brands,
                 "brand_weights": users.brand_weights, "activity": users.activity}  # fmt: skip
        with self._user_lock:
            (out,) = self._user.run(None, feeds)
        return np.asarray(out, np.float32)
