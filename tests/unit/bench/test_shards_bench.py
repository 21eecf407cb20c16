"""The sharded search benchmark's rounds per search, from two readings of the counter."""

from __future__ import annotations

from bench.shards import per_search


def test_rounds_per_search_count_a_stale_round_as_no_search_of_its_own() -> None:
    before = {"stats": 4.0, "candidates": 10.0, "stale": 1.0}
    after = {"stats": 9.0, "candidates": 32.0, "stale": 3.0}
    # 22 candidates rounds, 2 of them answered stale and made again: 20 searches
    assert per_search(before, after) == {
        "stats_rounds_per_search": 0.25,
        "stale_rounds_per_search": 0.1,
    }
    assert per_search(after, after) == {}  # no search between: nothing to report
