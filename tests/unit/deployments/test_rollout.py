"""Canary judgement over a sliding window, with a fake clock."""

from __future__ import annotations

from configs.schema import RolloutPolicy
from deployments.routing.rollout import CallWindow, CanaryMonitor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = RolloutPolicy(
    canary="v2", max_error_rate=0.1, max_p95_latency_ms=100, window_s=10, min_requests=20
)


def test_no_judgement_below_min_requests() -> None:
    monitor = CanaryMonitor(POLICY, Clock())
    for _ in range(19):
        monitor.record(False, 0.01)
    assert monitor.breach() is None
    monitor.record(False, 0.01)
    assert monitor.breach() is not None


def test_error_rate_breach_names_the_figures() -> None:
    monitor = CanaryMonitor(POLICY, Clock())
    for i in range(40):
        monitor.record(i % 5 != 0, 0.01)  # 20 % errors
    reason = monitor.breach()
    assert reason is not None
    assert "error rate 20.0% over 40 calls > 10.0%" in reason


def test_latency_breach_and_healthy_canary() -> None:
    clock = Clock()
    monitor = CanaryMonitor(POLICY, clock)
    for _ in range(30):
        monitor.record(True, 0.02)
    assert monitor.breach() is None
    for _ in range(10):
        monitor.record(True, 0.5)
    reason = monitor.breach()
    assert reason is not None
    assert reason.startswith("p95 latency 500 ms")


def test_old_calls_leave_the_window() -> None:
    clock = Clock()
    monitor = CanaryMonitor(POLICY, clock)
    for _ in range(30):
        monitor.record(False, 0.01)
    clock.now += 11
    assert monitor.breach() is None
    assert monitor.window.stats()["requests"] == 0


def test_call_window_stats() -> None:
    clock = Clock()
    window = CallWindow(60, clock)
    for i in range(100):
        window.record(i != 0, (i + 1) / 1000)
    stats = window.stats()
    assert stats["requests"] == 100
    assert stats["error_rate"] == 0.01
    assert stats["p95_latency_ms"] == 95.0


def test_a_threshold_is_judged_on_the_exact_figures_not_the_rounded_ones() -> None:
    """401 failed calls of 20,000 are 2.005 %, over a 2 % threshold: rounded to the
    displayed 2.0 % first, the canary passed; so did a p95 of 250.004 ms against 250."""
    errors = CanaryMonitor(
        RolloutPolicy(canary="v2", max_error_rate=0.02, min_requests=50), Clock()
    )
    for i in range(20_000):
        errors.record(i >= 401, 0.01)
    assert errors.window.stats()["error_rate"] == 0.02  # what status shows
    assert errors.breach() == "error rate 2.005% over 20000 calls > 2.000%"
    third = CanaryMonitor(
        RolloutPolicy(canary="v2", max_error_rate=0.3333, min_requests=3), Clock()
    )
    for ok in (False, True, True):
        third.record(ok, 0.01)
    assert third.breach() == "error rate 33.333% over 3 calls > 33.330%"
    slow = CanaryMonitor(RolloutPolicy(canary="v2", max_p95_latency_ms=250), Clock())
    for _ in range(20):
        slow.record(True, 0.250004)
    assert slow.window.stats()["p95_latency_ms"] == 250.0
    assert slow.breach() == "p95 latency 250.004 ms over 20 calls > 250.000 ms"
    at = CanaryMonitor(RolloutPolicy(canary="v2", max_error_rate=0.02, min_requests=50), Clock())
    for i in range(100):
        at.record(i >= 2, 0.01)  # exactly 2 %: not over
    assert at.breach() is None
