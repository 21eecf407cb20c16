"""Health that means something: a wedged runtime is noticed, off the request path.

Serve calls a replica's `check_health` every `health_check_period_s` and replaces
the replica when it raises. A flag set once at load says nothing about a runtime
that later hangs, so each version backend keeps a `HealthProbe`:

- a model run in flight for longer than `hung_after_s` means the runtime is wedged;
- a run that finished within `fresh_s` proves it works: the check costs nothing;
- a run in flight proves it works too (it will answer, or turn hung), unless the last
  run to end failed: a runtime that raises on every call (a sticky CUDA error, a broken
  session) always has a run in flight under traffic, and none of them proves anything;
- otherwise (idle, or failing) a tiny inference probe runs, at most one at a time,
  bounded by `probe_timeout_s`, so an idle replica is still proven every `fresh_s`,
  and a failing one is replaced once a probe fails too.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

from configs.schema import HealthSettings

# What a probe embeds: one short text.
PROBE_TEXT = "health probe"


class Unhealthy(RuntimeError):
    """The version's runtime does not answer; Serve replaces the replica."""


class HealthProbe:
    """Judges one runtime's liveness from its own runs, probing only when idle."""

    def __init__(
        self,
        label: str,
        probe: Callable[[float], Awaitable[object]],
        hung_after_s: float,
        fresh_s: float = 5.0,
        probe_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self._probe = probe  # called with a deadline; answers or raises
        self.hung_after_s = hung_after_s
        self.fresh_s = fresh_s
        self.probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._ids = itertools.count()
        self._running: dict[int, float] = {}
        self._last_ok = clock()  # just loaded (and warmed up)
        # Runs that raised since the last one that answered (or the last good probe):
        # while any, a run in flight proves nothing.
        self.failed_runs = 0
        self._probing: asyncio.Task[object] | None = None
        self.healthy = True
        self.reason = ""

    @classmethod
    def from_settings(
        cls, label: str, probe: Callable[[float], Awaitable[object]], settings: HealthSettings
    ) -> HealthProbe:
        """A probe with the application's `args.health` settings."""
        return cls(
            label,
            probe,
            hung_after_s=settings.hung_run_s,
            fresh_s=settings.probe_every_s,
            probe_timeout_s=settings.probe_timeout_s,
        )

    @property
    def ok(self) -> bool:
        """The last verdict was good and no run is stuck past `hung_after_s` now."""
        return self.healthy and self.stuck_for_s() <= self.hung_after_s

    def run_started(self) -> int:
        """A model run begins; returns its token for `run_finished`."""
        token = next(self._ids)
        self._running[token] = self._clock()
        return token

    def run_finished(self, token: int, ok: bool = True) -> None:
        """A model run ended (`ok`: it returned rather than raised)."""
        self._running.pop(token, None)
        if ok:
            self._last_ok = self._clock()
            self.healthy, self.reason = True, ""
            self.failed_runs = 0
        else:
            self.failed_runs += 1

    def stuck_for_s(self) -> float:
        """How long the oldest run in flight has been running (0 when none)."""
        if not self._running:
            return 0.0
        return self._clock() - min(self._running.values())

    async def check(self) -> None:
        """Raise `Unhealthy` when the runtime is wedged; otherwise return quickly."""
        stuck = self.stuck_for_s()
        if stuck > self.hung_after_s:
            self._fail(f"a model run has been going for {stuck:.0f} s")
        if self._clock() - self._last_ok < self.fresh_s:
            return
        if self._running and not self.failed_runs:  # busy and answering
            return
        if self._probing is None or self._probing.done():
            deadline = self._clock() + self.probe_timeout_s
            self._probing = asyncio.ensure_future(self._probe(deadline))
        try:
            await asyncio.wait_for(asyncio.shield(self._probing), self.probe_timeout_s)
        except TimeoutError:
            self._fail(f"the health probe got no answer within {self.probe_timeout_s:g} s")
        except Exception as e:
            self._fail(f"the health probe failed ({type(e).__name__})")
        else:
            self._last_ok = self._clock()
            self.healthy, self.reason = True, ""
            self.failed_runs = 0

    def _fail(self, reason: str) -> None:
        self.healthy, self.reason = False, reason
        raise Unhealthy(f"{self.label}: {reason}")
