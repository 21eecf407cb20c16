"""Weighted choice between a model's versions, in plain Python inside the ingress.

Without a routing key a version is drawn at random by weight. With one (a user id,
a session id) the choice is deterministic and monotone: weighted rendezvous hashing
gives each version a score `-weight / ln(u)` where `u` is a hash of (model, version,
key) in (0, 1), and the highest score wins. Raising a version's weight only raises
its scores, so every key already on it stays on it; the share of keys each version
gets is still weight / total. A version taken out (a canary rolled back) gives its keys
to the others in proportion to their weights, and no key moves between the others.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from configs.schema import WEIGHT_TOTAL


@dataclass(frozen=True)
class _Table:
    versions: tuple[str, ...]
    weights: tuple[int, ...]
    cumulative: tuple[int, ...]
    total: int


def key_uniform(model: str, version: str, key: str) -> float:
    """A hash of (model, version, key) mapped to a float strictly inside (0, 1)."""
    digest = hashlib.blake2b(f"{model}\x00{version}\x00{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


class TrafficSplitter:
    """Picks a version per request with probability weight / total.

    Versions with weight 0 are never picked by the split but remain callable when a
    request pins them. Replacing the weights is one attribute swap, so requests in
    flight never see half an update.
    """

    def __init__(
        self, weights: Mapping[str, Mapping[str, int]], rng: random.Random | None = None
    ) -> None:
        self._rng = rng or random.Random()
        self._tables: dict[str, _Table] = {}
        self.update(weights)

    def update(self, weights: Mapping[str, Mapping[str, int]]) -> None:
        """Replace every model's weights at once."""
        tables = {}
        for model, by_version in weights.items():
            live = [(v, w) for v, w in by_version.items() if w > 0]
            if not live:
                raise ValueError(f"traffic.{model}: no version has a weight above 0")
            cumulative, running = [], 0
            for _, weight in live:
                running += weight
                cumulative.append(running)
            tables[model] = _Table(
                tuple(v for v, _ in live), tuple(w for _, w in live), tuple(cumulative), running
            )
        self._tables = tables

    def pick(self, model: str, key: str | None = None) -> str:
        """A version of `model`: sticky for a routing key, drawn by weight otherwise."""
        table = self._tables[model]
        if len(table.versions) == 1:
            return table.versions[0]
        if key is not None:
            return max(
                zip(table.versions, table.weights, strict=True),
                key=lambda vw: -vw[1] / math.log(key_uniform(model, vw[0], key)),
            )[0]
        point = self._rng.randrange(table.total)
        return table.versions[bisect.bisect_right(table.cumulative, point)]

    def weights(self, model: str) -> dict[str, int]:
        """Each version's share of traffic in whole percent (summing to 100, by largest
        remainder when the weights do not), of the versions with traffic."""
        table = self._tables.get(model)
        if table is None:
            return {}
        exact = [w * WEIGHT_TOTAL / table.total for w in table.weights]
        shares = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: shares[i] - exact[i])
        for i in by_remainder[: WEIGHT_TOTAL - sum(shares)]:
            shares[i] += 1
        return dict(zip(table.versions, shares, strict=True))


def without_version(weights: Mapping[str, int], version: str) -> dict[str, int]:
    """Weights with `version` at 0. The others keep theirs: the split, by weight over
    their total, then gives them its traffic in proportion, and each key that was on
    one of them stays there (scaling every score alike changes no key's pick)."""
    return {**weights, version: 0}
