"""The raw benchmark's run-time percentiles (`python bench/raw_runtime.py --latency`)."""

from __future__ import annotations

import pytest

from bench.raw_runtime import percentiles_ms


def test_percentiles_pick_the_nearest_rank_in_milliseconds() -> None:
    runs = [i / 1000 for i in range(1, 101)]  # 1..100 ms, shuffled below
    runs = runs[50:] + runs[:50]
    got = percentiles_ms(runs)
    assert got == {"p50_ms": 51.0, "p90_ms": 90.0, "p99_ms": 99.0, "max_ms": 100.0}


def test_one_run_is_every_percentile() -> None:
    assert set(percentiles_ms([0.0042]).values()) == {4.2}


def test_no_runs_is_an_error() -> None:
    with pytest.raises(ValueError, match="no run times"):
        percentiles_ms([])
