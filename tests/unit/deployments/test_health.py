"""Health that notices a wedged runtime: the probe's verdicts on a fake clock, and an
inline version whose runtime hangs inside a run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from configs.schema import AppArgs
from deployments.replicas.health import PROBE_TEXT, HealthProbe, Unhealthy
from deployments.replicas.inline import InlineBatcher
from deployments.replicas.inline_backend import InlineBackend
from deployments.replicas.threads import SharedThreads
from tests.conftest import REPO_ROOT
from tests.unit.deployments.fakes import BatchRecorder, FakeRuntime


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """A probe coroutine that answers, fails or hangs as told, and counts its calls."""

    def __init__(self, outcome: str = "ok") -> None:
        self.outcome = outcome
        self.deadlines: list[float] = []
        self.answer: asyncio.Event | None = None  # set: probes in flight answer

    async def __call__(self, deadline: float) -> object:
        self.deadlines.append(deadline)
        if self.answer is not None:
            await self.answer.wait()
        if self.outcome == "hang":
            await asyncio.Event().wait()
        if self.outcome == "fail":
            raise RuntimeError("no session")
        return "ok"


def _probe(probe: Probe, clock: Clock, **kwargs: float) -> HealthProbe:
    settings = {"hung_after_s": 30.0, "fresh_s": 5.0, "probe_timeout_s": 0.05, **kwargs}
    return HealthProbe("minilm/v1", probe, clock=clock, **settings)


def test_a_fresh_runtime_is_not_probed() -> None:
    probe, clock = Probe(), Clock()
    health = _probe(probe, clock)
    clock.now += 4.9
    asyncio.run(health.check())
    assert probe.deadlines == []
    assert health.healthy


def test_an_idle_runtime_is_probed_once_for_concurrent_checks() -> None:
    probe, clock = Probe(), Clock()
    health = _probe(probe, clock, probe_timeout_s=5.0)
    clock.now += 5.1

    async def scenario() -> None:
        probe.answer = asyncio.Event()
        checks = [asyncio.create_task(health.check()) for _ in range(3)]
        await asyncio.sleep(0.01)  # all three wait on the one probe
        probe.answer.set()
        await asyncio.gather(*checks)
        await health.check()  # the probe's answer proves the runtime: fresh again

    asyncio.run(scenario())
    assert probe.deadlines == [clock.now + 5.0]
    assert health.healthy
    clock.now += 5.1
    asyncio.run(health.check())
    assert len(probe.deadlines) == 2


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("hang", "the health probe got no answer within 0.05 s"),
        ("fail", "the health probe failed (RuntimeError)"),
    ],
)
def test_a_probe_that_hangs_or_fails_is_unhealthy(outcome: str, reason: str) -> None:
    probe, clock = Probe(outcome), Clock()
    health = _probe(probe, clock)
    clock.now += 6
    with pytest.raises(Unhealthy) as caught:
        asyncio.run(health.check())
    assert str(caught.value) == f"minilm/v1: {reason}"
    assert (health.healthy, health.reason) == (False, reason)
    # A later probe that answers makes it healthy again.
    probe.outcome = "ok"
    clock.now += 6
    asyncio.run(health.check())
    assert (health.healthy, health.reason) == (True, "")


def test_a_run_stuck_past_hung_after_s_is_unhealthy_until_a_run_succeeds() -> None:
    probe, clock = Probe(), Clock()
    health = _probe(probe, clock, hung_after_s=30.0)
    token = health.run_started()
    clock.now += 29
    asyncio.run(health.check())  # busy, not hung: no probe, no verdict
    assert (health.stuck_for_s(), health.healthy, probe.deadlines) == (29, True, [])
    clock.now += 2
    with pytest.raises(Unhealthy, match=r"^minilm/v1: a model run has been going for 31 s$"):
        asyncio.run(health.check())
    assert not health.healthy
    health.run_finished(token, ok=True)
    assert (health.healthy, health.stuck_for_s()) == (True, 0.0)
    asyncio.run(health.check())
    assert probe.deadlines == []  # the run that just finished proves the runtime


def test_a_failed_run_proves_nothing() -> None:
    probe, clock = Probe(), Clock()
    health = _probe(probe, clock)
    clock.now += 4
    health.run_finished(health.run_started(), ok=False)
    clock.now += 2  # 6 s since the last good answer
    asyncio.run(health.check())
    assert len(probe.deadlines) == 1


def test_runs_in_flight_prove_nothing_while_the_runs_fail() -> None:
    """A runtime that raises on every call (a sticky CUDA error) always has a run in
    flight under traffic: that is no proof once runs fail, so the check probes, and
    the failed probe makes the version unhealthy."""
    probe, clock = Probe("fail"), Clock()
    health = _probe(probe, clock)
    for _ in range(3):
        clock.now += 2
        health.run_finished(health.run_started(), ok=False)
    health.run_started()  # traffic keeps a run in flight
    clock.now += 1  # 7 s since the last good answer
    with pytest.raises(Unhealthy, match=r"^minilm/v1: the health probe failed \(RuntimeError\)$"):
        asyncio.run(health.check())
    assert len(probe.deadlines) == 1
    assert not health.ok


def test_a_good_run_or_probe_makes_runs_in_flight_proof_again() -> None:
    probe, clock = Probe(), Clock()
    health = _probe(probe, clock)
    clock.now += 1
    health.run_finished(health.run_started(), ok=False)
    busy = health.run_started()
    clock.now += 5
    asyncio.run(health.check())  # the last run failed: probed, and the probe answered
    assert (len(probe.deadlines), health.failed_runs, health.healthy) == (1, 0, True)
    clock.now += 6
    asyncio.run(health.check())  # a run in flight, none failed since: no probe
    assert len(probe.deadlines) == 1
    clock.now += 1
    health.run_finished(health.run_started(), ok=False)
    assert health.failed_runs == 1
    health.run_finished(busy, ok=True)  # a run that ended after it answered
    assert health.failed_runs == 0
    health.run_started()
    clock.now += 6
    asyncio.run(health.check())
    assert len(probe.deadlines) == 1


# ---- an inline version whose runtime wedges ------------------------------------


def _args(**health: float) -> AppArgs:
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["health"] = health
    return AppArgs.model_validate(args)


@pytest.fixture
def batcher() -> Iterator[InlineBatcher]:
    executor = SharedThreads(1)
    batcher = InlineBatcher(FakeRuntime(), BatchRecorder(), executor)  # type: ignore[arg-type]
    yield batcher
    batcher.wedge.release()  # the hung inference thread returns
    executor.shutdown()


def test_a_wedged_inline_runtime_turns_unready_then_unhealthy(batcher: InlineBatcher) -> None:
    backend = InlineBackend("minilm/v1", batcher, _args(hung_run_s=0.3, probe_every_s=60))

    async def scenario() -> Any:
        assert await backend.ready()
        await backend.health.check()
        batcher.wedge.engage()
        call = asyncio.create_task(backend.embed(["stuck"], time.monotonic() + 30))
        await asyncio.sleep(0.05)
        assert await backend.ready()  # in flight, not yet past hung_run_s
        await backend.health.check()
        await asyncio.sleep(0.35)
        assert not await backend.ready()
        with pytest.raises(Unhealthy, match=r"^minilm/v1: a model run has been going for"):
            await backend.health.check()
        assert not backend.health.healthy
        batcher.wedge.release()
        result = await call
        assert await backend.ready()  # the run came back: healthy again
        await backend.health.check()
        return result

    try:
        vectors, tokens = asyncio.run(scenario())
    finally:
        batcher.wedge.release()
    assert (len(vectors), tokens) == (1, [len("stuck")])


def test_an_idle_wedged_inline_runtime_fails_its_probe(batcher: InlineBatcher) -> None:
    args = _args(hung_run_s=30, probe_every_s=0.05, probe_timeout_s=0.1)
    backend = InlineBackend("minilm/v1", batcher, args)
    runtime: Any = batcher.runtime

    async def scenario() -> None:
        batcher.wedge.engage()
        await asyncio.sleep(0.06)  # idle past probe_every_s: the next check probes
        with pytest.raises(Unhealthy, match=r"^minilm/v1: the health probe got no answer"):
            await backend.health.check()
        assert not await backend.ready()
        batcher.wedge.release()
        for _ in range(100):  # the probe's run comes back and proves the runtime
            if await backend.ready():
                break
            await asyncio.sleep(0.01)
        assert await backend.ready()

    try:
        asyncio.run(scenario())
    finally:
        batcher.wedge.release()
    assert runtime.runs == [[PROBE_TEXT]]  # the probe ran through the batcher
