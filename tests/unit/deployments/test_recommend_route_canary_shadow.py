"""`/v1/recommendations` around the recommender's versions: what the canary watch is
told (nothing when the caller goes away), and where shadow copies run (only in a
recommendation worker with room, never on the Ingress's event loop)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.datastructures import Headers

from configs.schema import RecommendationSettings, ShadowSpec
from deployments.dataplane import CallRecord
from deployments.http.recommend_routes import RecommendBody, recommend_work
from deployments.pipelines.catalog_index import Hit
from deployments.pipelines.recommend import Recommendations, RecommendQuery
from deployments.routing.shadow import Shadower
from stores.catalog import Item

MODEL = "recommender"


def _answer(*ids: str) -> Recommendations:
    return Recommendations([Hit(Item(i, {"title": i}), 1.0) for i in ids], "model", False, 3)


class _Metrics:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def shadow(self, model: str, primary: str, shadow: str, outcome: str, *_: Any) -> None:
        self.outcomes.append(outcome)


class _Router:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, bool]] = []
        self.metrics = _Metrics()
        self.shadow = Shadower(self._no_embedding, self.metrics)
        self.shadow.specs = {MODEL: ShadowSpec(version="v2", fraction=1.0)}

    @staticmethod
    async def _no_embedding(model: str, version: str, texts: list[str]) -> Any:
        raise AssertionError("a recommender's copy is no embedding call")

    def choose(self, model: str, pinned: str | None, source: str, key: str | None) -> str:
        return pinned or "v1"

    def weights(self, model: str) -> dict[str, int]:
        return {"v1": 100, "v2": 0}

    def record(self, model: str, version: str, ok: bool, seconds: float) -> None:
        self.recorded.append((version, ok))


class _Plane:
    def authorize(self, call: CallRecord, model: str, pinned: str | None) -> None:
        pass

    async def admit(self, call: CallRecord, texts: int) -> None:
        pass


class _Search:
    catalogs = {("default", "products"): object()}  # noqa: RUF012

    def catalogs_of(self, tenant: str) -> list[str]:
        return sorted(name for owner, name in self.catalogs if owner == tenant)

    def ready_spaces(self, tenant: str, catalog: str) -> list[str]:
        return [f"{MODEL}/v1", f"{MODEL}/v2"]


class _Worker:
    """A recommendation worker process's handle, as the route sees it."""

    def __init__(self, up: bool = True, waiting: int = 0, answers: bool = True) -> None:
        self.up, self.waiting, self.answers = up, waiting, answers
        self.copies: list[RecommendQuery] = []

    async def recommend(self, q: RecommendQuery, copy: bool = False) -> Recommendations | None:
        assert copy, "callers' requests reach the worker through the service"
        self.copies.append(q)
        await asyncio.sleep(0)
        return _answer("a", "b") if self.answers else None


class _Service:
    """The recommendation service: every call it answers itself runs on the Ingress's
    event loop (here: counted in `here`)."""

    model = MODEL

    def __init__(self, worker: Any = None, primary: Any = None) -> None:
        self.worker = worker
        self.here: list[str] = []
        self._primary = primary

    async def recommend(self, q: RecommendQuery) -> Recommendations:
        self.here.append(q.version)
        if self._primary is not None:
            return await self._primary(q)  # type: ignore[no-any-return]
        return _answer("a", "b", "c")

    def served(self, version: str, got: Recommendations) -> None:
        pass

    def space(self, version: str) -> str:
        return f"{MODEL}/{version}"


def _host(service: _Service) -> Any:
    return SimpleNamespace(
        recommend=service,
        args=SimpleNamespace(recommendations=RecommendationSettings()),
        plane=_Plane(),
        search=_Search(),
        router=_Router(),
    )


async def _call(host: Any) -> Any:
    body = RecommendBody(user="u-1")
    return await recommend_work(host, CallRecord(), body, Headers({}))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ---- the canary watch ------------------------------------------------------------------


def test_a_caller_who_goes_away_leaves_no_sample() -> None:
    """A client timeout cancels the request: the version did nothing wrong, and a canary
    must not be rolled back for its callers' patience."""
    started = asyncio.Event()

    async def slow(q: RecommendQuery) -> Recommendations:
        started.set()
        await asyncio.sleep(60)
        raise AssertionError("cancelled before")

    async def body() -> _Router:
        host = _host(_Service(primary=slow))
        task = asyncio.create_task(_call(host))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        router: _Router = host.router
        return router

    router = asyncio.run(body())
    assert router.recorded == []


def test_answers_and_failures_are_still_samples() -> None:
    async def failing(q: RecommendQuery) -> Recommendations:
        raise RuntimeError("the version broke")

    async def body() -> tuple[_Router, _Router]:
        good = _host(_Service())
        await _call(good)
        bad = _host(_Service(primary=failing))
        with pytest.raises(RuntimeError):
            await _call(bad)
        return good.router, bad.router

    good, bad = asyncio.run(body())
    assert good.recorded == [("v1", True)]
    assert bad.recorded == [("v1", False)]


# ---- shadow copies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "worker",
    [
        None,  # worker_process: false
        _Worker(up=False),  # starting, or restarting after a crash
        _Worker(waiting=1),  # busy with a caller's request
        SimpleNamespace(workers=[_Worker(waiting=2), _Worker(up=False)]),  # a pool, all busy
    ],
    ids=["no-worker", "worker-down", "worker-busy", "pool-busy"],
)
def test_a_copy_without_an_idle_worker_is_dropped_never_run_on_the_loop(worker: Any) -> None:
    async def body() -> tuple[_Service, _Router]:
        service = _Service(worker)
        host = _host(service)
        await _call(host)
        await _settle()
        return service, host.router

    service, router = asyncio.run(body())
    assert service.here == ["v1"]  # the caller's request alone ran here
    assert router.metrics.outcomes == ["dropped"]
    pair = router.shadow.state(MODEL)["pairs"]["v1->v2"]  # type: ignore[index]
    assert (pair["requests"], pair["dropped"]) == (0, 1)


def test_a_copy_goes_to_an_idle_worker_even_while_callers_are_answered_here() -> None:
    """One caller at a time is answered on the Ingress's loop (the hand-over would only
    add latency); its copies still run in the idle worker, never here."""
    busy, idle = _Worker(waiting=1), _Worker()

    async def body() -> tuple[_Service, _Router]:
        service = _Service(SimpleNamespace(workers=[busy, idle]))
        host = _host(service)
        await _call(host)
        await _settle()
        return service, host.router

    service, router = asyncio.run(body())
    assert service.here == ["v1"]
    assert [q.version for q in idle.copies] == ["v2"]
    assert busy.copies == []
    assert router.metrics.outcomes == ["ok"]
    pair = router.shadow.state(MODEL)["pairs"]["v1->v2"]  # type: ignore[index]
    assert (pair["requests"], pair["dropped"], pair["errors"]) == (1, 0, 0)
    assert pair["mean_cosine"] == pytest.approx(2 / 3)  # a and b of a, b, c


def test_a_copy_whose_worker_got_busy_or_gave_no_answer_is_dropped() -> None:
    worker = _Worker()

    async def body(host: Any) -> None:
        await _call(host)
        worker.waiting = 1  # a caller's request reached it before the copy ran
        await _settle()

    service = _Service(worker)
    host = _host(service)
    asyncio.run(body(host))
    assert worker.copies == []
    assert service.here == ["v1"]
    assert host.router.metrics.outcomes == ["dropped"]

    silent = _Worker(answers=False)  # restarting, or it has not indexed the catalog yet
    service = _Service(silent)
    host = _host(service)

    async def once() -> None:
        await _call(host)
        await _settle()

    asyncio.run(once())
    assert len(silent.copies) == 1
    assert service.here == ["v1"]
    assert host.router.metrics.outcomes == ["dropped"]
    pair = host.router.shadow.state(MODEL)["pairs"]["v1->v2"]
    assert (pair["requests"], pair["dropped"]) == (0, 1)


def test_shadow_agreement_of_two_empty_answers_is_full() -> None:
    """Both versions answering nothing (a filter no item passes) agree; they pulled the
    shadow's mean agreement down as if they had disagreed."""
    from deployments.http.recommend_routes import _agreement

    assert _agreement([], []) == 1.0
    assert _agreement([], ["a"]) == 0.0
    assert _agreement(["a", "b"], []) == 0.0
    assert _agreement(["a", "b"], ["b", "c"]) == 0.5
