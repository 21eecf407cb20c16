"""The in-ingress traffic split: realised shares stay within statistical bounds."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from deployments.traffic import TrafficSplitter

N = 20_000


@pytest.mark.parametrize(
    "weights",
    [{"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"a": 1, "b": 99}, {"a": 20, "b": 30, "c": 50}],
)
def test_realised_split_within_bounds(weights: dict[str, int]) -> None:
    splitter = TrafficSplitter({"m": weights}, rng=random.Random(7))
    seen = Counter(splitter.pick("m") for _ in range(N))
    for version, weight in weights.items():
        p = weight / 100
        sd = math.sqrt(N * p * (1 - p))
        assert abs(seen[version] - N * p) <= 5 * sd + 1, (version, seen)


def test_zero_weight_is_never_picked_and_update_is_atomic() -> None:
    splitter = TrafficSplitter({"m": {"v1": 100, "v2": 0}}, rng=random.Random(1))
    assert {splitter.pick("m") for _ in range(1000)} == {"v1"}
    assert splitter.weights("m") == {"v1": 100}
    splitter.update({"m": {"v1": 0, "v2": 100}})
    assert {splitter.pick("m") for _ in range(1000)} == {"v2"}
    assert splitter.weights("m") == {"v2": 100}


def test_all_zero_is_refused() -> None:
    with pytest.raises(ValueError, match=r"traffic\.m: no version has a weight above 0"):
        TrafficSplitter({"m": {"v1": 0}})


def test_unseeded_splitter_is_random() -> None:
    splitter = TrafficSplitter({"m": {"v1": 50, "v2": 50}})
    assert {splitter.pick("m") for _ in range(200)} == {"v1", "v2"}
