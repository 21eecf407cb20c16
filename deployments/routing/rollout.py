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
        """Calls, rate, error rate and p95 latency (ms) over the window."""
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
            "rate_per_s": round(n / self.window_s, 3),
            "error_rate": round(errors / n, 4),
            "p95_latency_ms": round(p95 * 1000, 2),
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
        stats = self.window.stats()
        if stats["requests"] < self.policy.min_requests:
            return None
        if stats["error_rate"] > self.policy.max_error_rate:
            return (
                f"error rate {stats['error_rate']:.1%} over {stats['requests']:.0f} calls "
                f"> {self.policy.max_error_rate:.1%}"
            )
        if stats["p95_latency_ms"] > self.policy.max_p95_latency_ms:
            return (
                f"p95 latency {stats['p95_latency_ms']:.0f} ms over {stats['requests']:.0f} "
                f"calls > {self.policy.max_p95_latency_ms:.0f} ms"
            )
        return None
