"""Canary watch: judge a version's recent calls against its rollout policy.

Plain Python: the ingress records every call to a watched canary and asks whether
the policy is breached; the ingress then takes the canary's traffic away.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from configs.schema import CANARY_WINDOW_MAX_CALLS, RolloutPolicy

# Enough samples for a stable p95 at any realistic canary rate; older ones drop off. A
# policy's `min_requests` is capped at it by the schema: a larger one could never be met.
MAX_SAMPLES = CANARY_WINDOW_MAX_CALLS


class CallWindow:
    """Sliding window of one version's call outcomes: (time, ok, latency)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._calls: deque[tuple[float, bool, float]] = deque(maxlen=MAX_SAMPLES)

    def record(self, ok: bool, latency_s: float) -> None:
        """One call: whether it succeeded and how long it took."""
        self._calls.append((self._clock(), ok, latency_s))

    def stats(self) -> dict[str, float]:
        """Calls, rate, error rate and p95 latency (ms) over the window, rounded for
        display (a verdict is judged on `exact_stats`)."""
        exact = self.exact_stats()
        return {
            "requests": exact["requests"],
            "rate_per_s": round(exact["rate_per_s"], 3),
            "error_rate": round(exact["error_rate"], 4),
            "p95_latency_ms": round(exact["p95_latency_ms"], 2),
        }

    def exact_stats(self) -> dict[str, float]:
        """`stats` unrounded: what a threshold is compared with (rounded, 2.005 % of
        failed calls read as 2.0 % and passed a 2 % threshold)."""
        horizon = self._clock() - self.window_s
        while self._calls and self._calls[0][0] < horizon:
            self._calls.popleft()
        n = len(self._calls)
        if not n:
            return {"requests": 0, "rate_per_s": 0.0, "error_rate": 0.0, "p95_latency_ms": 0.0}
        errors = sum(1 for _, ok, _ in self._calls if not ok)
        latencies = sorted(lat for _, _, lat in self._calls)
        p95 = latencies[min(n - 1, max(0, math.ceil(0.95 * n) - 1))]
        return {
            "requests": n,
            "rate_per_s": n / self.window_s,
            "error_rate": errors / n,
            "p95_latency_ms": p95 * 1000,
        }


class CanaryMonitor:
    """Judges one canary's recent calls against its rollout policy."""

    def __init__(self, policy: RolloutPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.window = CallWindow(policy.window_s, clock)

    def record(self, ok: bool, latency_s: float) -> None:
        """One canary call."""
        self.window.record(ok, latency_s)

    def breach(self) -> str | None:
        """Why the policy is breached, or None while the canary behaves."""
        stats = self.window.exact_stats()
        if stats["requests"] < self.policy.min_requests:
            return None
        if stats["error_rate"] > self.policy.max_error_rate:
            seen, limit = _apart(stats["error_rate"] * 100, self.policy.max_error_rate * 100)
            return f"error rate {seen}% over {stats['requests']:.0f} calls > {limit}%"
        if stats["p95_latency_ms"] > self.policy.max_p95_latency_ms:
            seen, limit = _apart(stats["p95_latency_ms"], self.policy.max_p95_latency_ms, 0)
            return f"p95 latency {seen} ms over {stats['requests']:.0f} calls > {limit} ms"
        return None


def _apart(seen: float, limit: float, digits: int = 1) -> tuple[str, str]:
    """`seen` and `limit` with `digits` decimals, or with as many more as it takes for
    them to read apart (2.005 % against 2 % reads 2.005% > 2.000%, not 2.0% > 2.0%)."""
    for places in range(digits, digits + 6):
        shown = f"{seen:.{places}f}", f"{limit:.{places}f}"
        if shown[0] != shown[1]:
            return shown
    return shown
