"""The in-ingress traffic split: realised shares stay within statistical bounds."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from deployments.routing.traffic import TrafficSplitter

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


def test_sticky_keys_always_get_the_same_version() -> None:
    splitter = TrafficSplitter({"m": {"v1": 70, "v2": 30}})
    for i in range(200):
        key = f"user-{i}"
        assert len({splitter.pick("m", key) for _ in range(5)}) == 1


def test_sticky_shares_follow_weights() -> None:
    splitter = TrafficSplitter({"m": {"v1": 80, "v2": 20}})
    seen = Counter(splitter.pick("m", f"user-{i}") for i in range(N))
    sd = math.sqrt(N * 0.2 * 0.8)
    assert abs(seen["v2"] - N * 0.2) <= 5 * sd


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"v1": 90, "v2": 10}, {"v1": 80, "v2": 20}),
        ({"v1": 95, "v2": 5}, {"v1": 50, "v2": 50}),
        ({"v1": 60, "v2": 10, "v3": 30}, {"v1": 50, "v2": 20, "v3": 30}),
    ],
)
def test_raising_a_candidate_keeps_its_users(before: dict[str, int], after: dict[str, int]) -> None:
    keys = [f"user-{i}" for i in range(5000)]
    first = TrafficSplitter({"m": before})
    on_candidate = {k for k in keys if first.pick("m", k) == "v2"}
    second = TrafficSplitter({"m": after})
    assert on_candidate
    assert all(second.pick("m", k) == "v2" for k in on_candidate)


def test_without_version_spreads_its_keys_and_moves_no_other() -> None:
    """A rolled-back canary's keys go to the others by weight; no key moves between the
    healthy versions (an A/B test beside the canary keeps its users)."""
    from deployments.routing.traffic import without_version

    assert without_version({"v1": 90, "v2": 10}, "v2") == {"v1": 90, "v2": 0}
    before = {"v1": 50, "v2": 40, "v3": 10}
    after = without_version(before, "v3")
    keys = [f"user-{i}" for i in range(20000)]
    first, second = TrafficSplitter({"m": before}), TrafficSplitter({"m": after})
    moved = Counter(second.pick("m", k) for k in keys if first.pick("m", k) == "v3")
    assert all(
        second.pick("m", k) == first.pick("m", k) for k in keys if first.pick("m", k) != "v3"
    )
    assert set(moved) == {"v1", "v2"}
    assert moved["v1"] / sum(moved.values()) == pytest.approx(50 / 90, abs=0.05)
    assert second.weights("m") == {"v1": 56, "v2": 44}


def test_shown_weights_sum_to_100() -> None:
    assert TrafficSplitter({"m": {"a": 50, "b": 30}}).weights("m") == {"a": 63, "b": 37}
    assert TrafficSplitter({"m": {"a": 1, "b": 1, "c": 1}}).weights("m") == {
        "a": 34,
        "b": 33,
        "c": 33,
    }
    assert TrafficSplitter({"m": {"a": 70, "b": 30}}).weights("m") == {"a": 70, "b": 30}
