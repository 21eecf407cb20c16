"""Canary verdicts shared by every ingress replica.

Each ingress replica records the outcome of every call to a watched canary and hands
its new samples to one `CanaryJudge` about twice a second (`CanaryJudge.sync`). The
judge holds one window per model and policy, fed by every replica, judges it against
the rollout policy, and answers every sync with the verdicts and windows, so a
rollback decided from any replica's calls reaches all of them at their next sync.

A verdict belongs to the live config it was decided under (a fingerprint of the
model's traffic and rollout policy): a replica restarted with the same config picks it
up again, and applying a new config (a fix, a new canary) starts afresh. A config that
no replica has run for `FORGET_AFTER_S` is forgotten with its verdict, so applying it
again later (the same weights promoted anew) is a fresh watch too. The judge keeps its
verdicts in memory; if it restarts, the replicas that had rolled back hand theirs back
with their next sync (unless an operator cleared the model since), so a restart is
never taken for a `servekit rollout clear`.

Plain Python. In production the judge lives in a named, detached Ray actor (see
`deployments/canary_sync.py`); the tests also use it in-process.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from configs.schema import RolloutPolicy
from deployments.routing.rollout import CanaryMonitor

# Samples one replica hands over per sync at most; beyond, every n-th is kept.
MAX_SAMPLES_PER_SYNC = 5000
# A config no replica has synced under for this long is forgotten, its verdict too.
FORGET_AFTER_S = 300.0

Samples = list[tuple[bool, float]]  # (ok, latency_s)


def fingerprint(traffic: Mapping[str, int], policy: RolloutPolicy) -> str:
    """Identifies the live config a verdict was decided under."""
    doc = {"traffic": dict(sorted(traffic.items())), "policy": policy.model_dump()}
    return hashlib.blake2b(
        orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), digest_size=8
    ).hexdigest()


def thin(samples: Samples, limit: int = MAX_SAMPLES_PER_SYNC) -> Samples:
    """At most `limit` samples, evenly spread over the given ones."""
    if len(samples) <= limit:
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


class CanaryJudge:
    """The one place canary windows are aggregated and judged."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._monitors: dict[tuple[str, str], CanaryMonitor] = {}
        self._verdicts: dict[tuple[str, str], dict[str, Any]] = {}
        self._seen: dict[tuple[str, str], float] = {}  # last sync under each config
        self._cleared_at: dict[str, float] = {}  # wall clock of each model's last clear
        self.events: list[dict[str, Any]] = []

    def sync(
        self,
        replica: str,
        policies: Mapping[str, tuple[str, dict[str, Any]]],
        samples: Mapping[str, Samples],
        known: Mapping[str, dict[str, Any]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Take one replica's new canary samples; answer, per model it watches, the
        verdict in force (or None), the aggregated window, and whether this very sync
        decided the verdict (`decided_now`: that replica counts the rollback). `known`:
        the verdicts the replica is acting on, which a restarted judge takes back."""
        out: dict[str, dict[str, Any]] = {}
        now = self._clock()
        for model, (fp, policy_doc) in policies.items():
            key = (model, fp)
            last = self._seen.get(key)
            if last is not None and now - last > FORGET_AFTER_S:
                self._verdicts.pop(key, None)  # left, and now applied again: afresh
                self._monitors.pop(key, None)
            self._seen[key] = now
            held = (known or {}).get(model)
            if (
                key not in self._verdicts
                and held is not None
                and held.get("fingerprint") == fp
                and float(held.get("at", 0.0)) > self._cleared_at.get(model, 0.0)
            ):
                self._verdicts[key] = dict(held)  # this judge restarted: taken back
            monitor = self._monitors.get(key)
            if monitor is None:
                monitor = self._monitors[key] = CanaryMonitor(
                    RolloutPolicy.model_validate(policy_doc), self._clock
                )
            decided_now = False
            if key not in self._verdicts:
                for ok, latency_s in samples.get(model, ()):
                    monitor.record(ok, latency_s)
                reason = monitor.breach()
                if reason is not None:
                    decided_now = True
                    self._decide(model, fp, monitor.policy.canary, reason, replica)
            out[model] = {
                "verdict": self._verdicts.get(key),
                "window": monitor.window.stats(),
                "decided_now": decided_now,
            }
        return out

    def _decide(self, model: str, fp: str, version: str, reason: str, replica: str) -> None:
        verdict = {
            "version": version,
            "reason": reason,
            "at": time.time(),
            "fingerprint": fp,
            "decided_from": replica,
        }
        self._verdicts[(model, fp)] = verdict
        self.events.append({"model": model, **verdict})

    def clear(self, model: str) -> int:
        """Forget `model`'s verdicts and windows (an operator's `servekit rollout
        clear`): its canary gets its weight back and is watched afresh. How many
        verdicts were in force."""
        gone = [key for key in self._verdicts if key[0] == model]
        for key in gone:
            del self._verdicts[key]
        for key in [key for key in self._monitors if key[0] == model]:
            del self._monitors[key]
        self._cleared_at[model] = time.time()
        self.events.append({"model": model, "cleared": len(gone), "at": time.time()})
        return len(gone)

    def verdicts(self) -> list[dict[str, Any]]:
        """Every verdict decided since the judge started (for operators and tests)."""
        return [e for e in self.events if "cleared" not in e]
