"""Weighted choice between a model's versions, in plain Python inside the ingress."""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class _Table:
    versions: tuple[str, ...]
    cumulative: tuple[int, ...]
    total: int


class TrafficSplitter:
    """Picks a version per request with probability weight / total.

    Versions with weight 0 are never picked at random but remain callable when a
    request pins them. Replacing the weights is one attribute swap, so requests in
    flight never see half an update.
    """

    def __init__(self, weights: Mapping[str, Mapping[str, int]], rng: random.Random | None = None):
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
            tables[model] = _Table(tuple(v for v, _ in live), tuple(cumulative), running)
        self._tables = tables

    def pick(self, model: str) -> str:
        """A version of `model`, drawn by weight."""
        table = self._tables[model]
        if len(table.versions) == 1:
            return table.versions[0]
        point = self._rng.randrange(table.total)
        return table.versions[bisect.bisect_right(table.cumulative, point)]

    def weights(self, model: str) -> dict[str, int]:
        """Current weights of the versions with traffic."""
        table = self._tables.get(model)
        if table is None:
            return {}
        previous = 0
        out = {}
        for version, cumulative in zip(table.versions, table.cumulative, strict=True):
            out[version] = cumulative - previous
            previous = cumulative
        return out
