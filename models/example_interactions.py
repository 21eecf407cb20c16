"""Interaction logs over a catalog, from users with hidden tastes: what the recommender
is trained and evaluated on.

    python -m models.example_interactions --catalog artifacts/catalog/products.jsonl \\
        --out artifacts/catalog/interactions.parquet [--users 3000] [--seed 0]

No installed package ships interactions over this catalog, so they are generated. Each
user has a taste nobody sees: two favourite categories (popular ones more often), a
favourite brand in each, a price level (a quantile of the category's prices) and a
colour. A session picks a category (a favourite 85 % of the time), views items drawn
by how well they suit the taste (plus each item's own appeal), and clicks, adds to the
cart and buys the ones that suit best. Sessions are spread over 60 days, so the log
splits by time: a model that learns the tastes from the first days predicts the last.
The same catalog, seed and size give the same log.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stores.catalog import Item

DAY_S = 86_400
DAYS = 60
START_S = 1_767_225_600  # 2026-01-01 UTC
FAVOURITE_SHARE = 0.85
SESSIONS_PER_USER = 8  # mean (Poisson)


@dataclass(frozen=True)
class Interaction:
    """One event of a user on an item."""

    user: str
    item: str
    type: str  # view, click, add_to_cart, purchase
    timestamp: float  # Unix seconds


@dataclass(frozen=True)
class Taste:
    """What a user likes (hidden: only its interactions show it)."""

    categories: tuple[str, str]
    brands: tuple[str, str]  # one per favourite category
    price_quantile: float
    color: str


class _Category:
    """A category's items, as arrays for sampling."""

    def __init__(self, items: list[Item], appeal: np.ndarray) -> None:
        self.ids = [i.id for i in items]
        self.brands = np.array([str(i.attributes.get("brand", "")) for i in items])
        self.colors = np.array([str(i.attributes.get("color", "")) for i in items])
        prices = np.array([float(i.attributes.get("price", 0.0)) for i in items])  # type: ignore[arg-type]
        order = prices.argsort(kind="stable")
        self.price_q = np.empty(len(items))
        self.price_q[order] = np.linspace(0, 1, len(items)) if len(items) > 1 else 0.5
        self.appeal = appeal


def _categories(items: Sequence[Item], rng: np.random.Generator) -> dict[str, _Category]:
    by: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by[str(item.attributes.get("category", ""))].append(item)
    # An item's own appeal (what makes some products sell better than their peers).
    return {c: _Category(its, rng.normal(0, 0.5, len(its))) for c, its in sorted(by.items())}


def _taste(cats: dict[str, _Category], names: list[str], weights: np.ndarray,
           rng: np.random.Generator) -> Taste:  # fmt: skip
    two = rng.choice(len(names), size=2, replace=False, p=weights)
    favourite = (names[two[0]], names[two[1]])
    brands = tuple(str(rng.choice(np.unique(cats[c].brands))) for c in favourite)
    colors = np.unique(np.concatenate([cats[c].colors for c in favourite]))
    return Taste(
        favourite, (brands[0], brands[1]), float(rng.choice([0.15, 0.5, 0.85])),
        str(rng.choice(colors)),
    )  # fmt: skip


def _utility(cat: _Category, taste: Taste, name: str) -> np.ndarray:
    brand = taste.brands[taste.categories.index(name)] if name in taste.categories else ""
    utility: np.ndarray = (
        1.5 * (cat.brands == brand)
        + 0.7 * (cat.colors == taste.color)
        - 2.5 * np.abs(cat.price_q - taste.price_quantile)
        + cat.appeal
    )
    return utility


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def generate(items: Sequence[Item], users: int = 3000, seed: int = 0) -> list[Interaction]:
    """The interaction log of `users` users over `items`, oldest first."""
    rng = np.random.default_rng(seed)
    cats = _categories(items, rng)
    names = list(cats)
    popularity = 1 / np.arange(1, len(names) + 1) ** 0.8
    popularity = popularity[rng.permutation(len(names))]
    popularity /= popularity.sum()
    log: list[Interaction] = []
    for u in range(users):
        user = f"u{u:05d}"
        taste = _taste(cats, names, popularity, rng)
        for _ in range(max(1, rng.poisson(SESSIONS_PER_USER))):
            if rng.random() < FAVOURITE_SHARE:
                name = taste.categories[int(rng.integers(2))]
            else:
                name = names[int(rng.choice(len(names), p=popularity))]
            cat = cats[name]
            utility = _utility(cat, taste, name)
            p = np.exp(2 * (utility - utility.max()))
            p /= p.sum()
            views = min(len(cat.ids), int(rng.integers(3, 9)))
            seen = rng.choice(len(cat.ids), size=views, replace=False, p=p)
            at = START_S + rng.random() * DAYS * DAY_S
            for n in seen:
                at += float(rng.integers(5, 90))
                item, fit = cat.ids[n], float(utility[n])
                log.append(Interaction(user, item, "view", at))
                if rng.random() < _sigmoid(2 * fit - 2):
                    log.append(Interaction(user, item, "click", at + 2))
                    if rng.random() < _sigmoid(2 * fit - 3.5):
                        log.append(Interaction(user, item, "add_to_cart", at + 20))
                        if rng.random() < 0.4:
                            log.append(Interaction(user, item, "purchase", at + 60))
    log.sort(key=lambda e: (e.timestamp, e.user))
    return log


def split(
    log: Sequence[Interaction], test_days: int = 10
) -> tuple[list[Interaction], list[Interaction]]:
    """Train on everything before the last `test_days`, test on those days."""
    cut = START_S + (DAYS - test_days) * DAY_S
    return [e for e in log if e.timestamp < cut], [e for e in log if e.timestamp >= cut]


def write_parquet(log: Sequence[Interaction], path: Path) -> None:
    """The log as `servekit features materialize` reads it (user, item, type, timestamp)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "user": [e.user for e in log],
            "item": [e.item for e in log],
            "type": [e.type for e in log],
            "timestamp": pa.array([e.timestamp for e in log], pa.float64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from models.example_catalog import read_items

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--catalog", type=Path, default=Path("artifacts/catalog/products.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/catalog/interactions.parquet"))
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    log = generate(read_items(args.catalog), args.users, args.seed)
    write_parquet(log, args.out)
    counts: dict[str, int] = defaultdict(int)
    for e in log:
        counts[e.type] += 1
    print(f"{args.out}: {len(log)} interactions of {args.users} users: {dict(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
