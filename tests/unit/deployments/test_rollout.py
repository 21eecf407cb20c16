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
