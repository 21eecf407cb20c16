"""The recommendation worker: its wire format, and a real worker process over real
stores (the catalog store and event log on SQLite, the embedded online store, the built
recommender) answering exactly what the same service answers in-process; killed, it is
answered for here and comes back; stopped mid-request, it is replaced and the requests
waiting on it are answered here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml

from configs.features import load_definitions
from configs.schema import AppArgs
from configs.settings import PROJECT_ROOT
from deployments.pipelines.catalog_index import Hit
from deployments.pipelines.features import FeatureService
from deployments.pipelines.features_wiring import catalog_items, embedded_path
from deployments.pipelines.filters import FilterError
from deployments.pipelines.recommend import (
    PopularItems,
    Recommendations,
    RecommendQuery,
    RecommendService,
)
from deployments.pipelines.recommend_process import (
    MAX_FRAME,
    Frames,
    RecommendWorker,
    WorkerPool,
    answer_doc,
    answer_of,
    frame,
    query_doc,
    query_of,
)
from deployments.pipelines.search import SearchService
from deployments.pipelines.wiring import space_artifacts
from deployments.replicas.recommender_backend import load_recommenders
from stores.catalog import Item
from stores.catalog_sql import open_catalog_store
from stores.events import Event
from stores.events_sql import open_event_log
from stores.features_redis import RedisFeatureStore
from stores.features_sqlite import SqliteFeatureStore
from tests.redis_server import RedisServer

LOG = logging.getLogger("test")
TENANT = "tn-worker"


def test_frames_are_split_and_joined_whatever_the_chunks() -> None:
    docs = [[1, ["a", "shop", "u", "v1", 5, None, True, None]], {"x": "é" * 300}, [2, None]]
    stream = b"".join(frame(d) for d in docs)
    for size in (1, 3, 7, len(stream)):
        frames = Frames()
        got = []
        for at in range(0, len(stream), size):
            got += frames.feed(stream[at : at + size])
        assert got == docs


def test_a_frame_over_the_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="a frame of"):
        Frames().feed((MAX_FRAME + 1).to_bytes(4, "big") + b"{}")


def test_queries_and_answers_cross_the_wire_unchanged() -> None:
    q = RecommendQuery("t", "shop", "u-1", "v2", 7, {"price": {"lt": 20}}, False, "sku-9")
    assert query_of(query_doc(q)) == q
    got = Recommendations(
        [Hit(Item("sku-1", {"title": "Hat"}, {"price": 12.5, "tags": ["a"]}), 0.75)],
        "model", False, 150, {"features": 0.1, "rank": 0.4},
    )  # fmt: skip
    back = answer_of(answer_doc(got))
    assert back.process == "worker"
    back.process = "ingress"
    assert back == got


def test_an_answer_json_cannot_carry_goes_back_as_an_error() -> None:
    from deployments.pipelines.recommend_process import _Requests

    class Transport:
        def __init__(self) -> None:
            self.sent = Frames()
            self.got: list[Any] = []

        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes) -> None:
            self.got += self.sent.feed(data)

    async def answer(query: list[Any]) -> dict[str, Any]:
        return {"hits": [], "id": 2**70} if query[2] == "wide" else {"hits": []}

    async def run() -> list[Any]:
        requests, transport = _Requests(answer), Transport()
        requests.connection_made(transport)  # type: ignore[arg-type]
        requests.data_received(frame([1, ["t", "c", "wide"]]) + frame([2, ["t", "c", "u"]]))
        await asyncio.gather(*requests.tasks)
        return transport.got

    assert sorted(asyncio.run(run())) == [[1, {"error": "encode"}], [2, {"hits": []}]]
    with pytest.raises(ValueError, match="a frame of"):
        frame("x" * (MAX_FRAME + 1))


def test_one_lost_answer_is_answered_here_while_the_worker_stays(tmp_path: Path) -> None:
    """A worker that answers every request but one: that caller is answered here after
    twice the stall time; the worker stays, its restart wait back at the least once it
    answers; a late goodbye from an earlier worker's connection changes nothing."""
    from deployments.pipelines.recommend_process import _Answers

    answer = answer_doc(Recommendations([], "popular", False, 0, {}))

    class FakeWorker(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.frames = Frames()

        def data_received(self, data: bytes) -> None:
            for number, query in self.frames.feed(data):
                if query[2] != "lost":
                    self.transport.write(frame([number, answer]))  # type: ignore[attr-defined]

    async def run() -> None:
        worker = RecommendWorker("{}", LOG, stall_s=0.3)
        loop = asyncio.get_running_loop()
        path = str(tmp_path / "w.sock")
        server = await loop.create_unix_server(FakeWorker, path)
        _, answers = await loop.create_unix_connection(lambda: _Answers(worker._lost), path)
        worker._answers, worker.state, worker._failures = answers, "up", 3
        worker._watch = asyncio.create_task(worker._watch_stalls())

        async def steady() -> list[Recommendations | None]:
            out = []
            for _ in range(20):  # answers keep flowing while one is lost
                out.append(await worker.recommend(_query("u")))
                await asyncio.sleep(0.04)
            return out

        started = time.monotonic()
        lost, flowing = await asyncio.gather(worker.recommend(_query("lost")), steady())
        assert lost is None
        assert 0.6 <= time.monotonic() - started < 2
        assert all(r is not None and r.source == "popular" for r in flowing)
        assert (worker.state, worker._failures, answers.waiting) == ("up", 0, {})
        worker._lost(_Answers(worker._lost))  # an earlier worker's connection, closed late
        assert worker.state == "up"
        assert await worker.recommend(_query("u")) is not None
        answers.transport.close()  # type: ignore[union-attr]  # its own: answered here
        await asyncio.sleep(0.05)
        assert worker.state == "down"
        assert worker._watch is None
        server.close()

    asyncio.run(run())


def _items() -> list[Item]:
    out = []
    for category, brand in (("hats", "Hatters"), ("socks", "Woolly"), ("mugs", "Clayworks")):
        for n in range(15):
            out.append(
                Item(f"{category}-{n}", {"title": f"{category} number {n}", "brand": brand},
                     {"category": category, "brand": brand, "price": 10.0 + n})
            )  # fmt: skip
    return out


def _events() -> list[Event]:
    now = datetime.now(UTC)
    likes = {"ann": "hats", "bob": "socks", "cy": "mugs"}
    return [
        Event(user, f"{category}-{n}", kind, now, "shop")
        for user, category in likes.items()
        for n, kind in ((1, "purchase"), (2, "click"), (3, "view"), (4, "add_to_cart"))
    ]


@pytest.fixture(params=["embedded"])
def stores(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """The shipped args over stores in `tmp_path` (the online features embedded, or on a
    real redis-server with the param `redis`), the catalog and events in them, and the
    same service as the worker builds, in this process."""
    dsn = f"sqlite:///{tmp_path}/registry.db"
    monkeypatch.setenv("SERVEKIT_REGISTRY_DSN", dsn)
    redis = None
    if request.param == "redis":
        from tests.conftest import free_port

        redis = RedisServer(free_port()).start()
        monkeypatch.setenv("SERVEKIT_FEATURES_REDIS_URL", redis.url)
    doc = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    raw = doc["applications"][0]["args"]
    raw["artifact_root"] = str(PROJECT_ROOT)
    raw["artifact_cache_dir"] = str(tmp_path / "cache")
    raw["search"] = {**raw.get("search", {}), "follow_s": 0.05}
    args = AppArgs.model_validate(raw)
    catalogs, events = open_catalog_store(dsn), open_event_log(dsn)

    async def no_text(tenant: str, space: str, texts: list[str]) -> Any:
        raise AssertionError("only the recommender's space is kept here")

    # As the Ingress and the workers are: the stored vectors named by their artifact.
    search = SearchService(
        catalogs, no_text, 0.05, LOG, backfill_delay_s=0, space_artifacts=space_artifacts(args)
    )
    store: Any = SqliteFeatureStore(embedded_path(dsn))
    if redis is not None:
        store = RedisFeatureStore(redis.url, timeout_s=0.2)
    features = FeatureService(load_definitions(None), store, events, catalog_items(search), LOG)
    versions = {v: b.recommender for (_, v), b in load_recommenders(args).items()}
    service = RecommendService(
        "recommender", versions, search, features,
        PopularItems(events, args.recommendations, LOG), args.recommendations,
    )  # fmt: skip
    search.item_model = ("recommender", service.item_vectors)

    async def load() -> None:
        await search.start([service.space(v) for v in versions])
        await search.upsert(TENANT, "shop", _items())
        await features.ingest(TENANT, _events(), "shop")

    asyncio.run(load())
    yield {"args": args, "service": service, "search": search, "redis": redis}
    if redis is not None:
        redis.stop()
    asyncio.run(search.close())
    catalogs.close()
    events.close()


def _query(user: str, **kw: Any) -> RecommendQuery:
    base: dict[str, Any] = {"k": 6, "filters": None, "exclude_seen": True}
    return RecommendQuery(TENANT, "shop", user, "v1", **{**base, **kw})


async def _until_up(worker: RecommendWorker, q: RecommendQuery) -> Recommendations:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        got = await worker.recommend(q)
        if got is not None:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"the worker did not answer: {worker.state}, pid {worker.pid}")


def _same(a: Recommendations, b: Recommendations) -> None:
    def items(r: Recommendations) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        return [(h.item.id, h.item.text, dict(h.item.attributes)) for h in r.hits]

    assert items(a) == items(b)
    assert [h.score for h in a.hits] == pytest.approx([h.score for h in b.hits], abs=1e-6)
    assert (a.source, a.degraded, a.candidates) == (b.source, b.degraded, b.candidates)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # uvloop: a replica's loop
def test_a_worker_answers_as_the_service_does_here_and_comes_back_after_a_kill(
    stores: dict[str, Any], loop: str
) -> None:
    service: RecommendService = stores["service"]
    worker = RecommendWorker(stores["args"].model_dump_json(), LOG, restart_after_s=0.2)

    async def run() -> None:
        first = _query("ann")
        assert await worker.recommend(first) is None  # starting: answered here
        got = await _until_up(worker, first)
        assert worker.state == "up"
        assert got.source == "model"
        index = stores["search"].catalogs[(TENANT, "shop")]
        for user, kw in (("ann", {}), ("bob", {"k": 3}), ("cy", {"exclude_seen": False}),
                         ("nobody", {}), ("ann", {"filters": {"category": "mugs"}}),
                         ("bob", {"context_item": "mugs-7"})):  # fmt: skip
            q = _query(user, **kw)
            from_worker = await worker.recommend(q)
            assert from_worker is not None
            _same(from_worker, await service.recommend_here(q, index))
        many = await asyncio.gather(*(worker.recommend(_query(u)) for u in ["ann", "bob"] * 8))
        assert all(g is not None and g.source == "model" for g in many)
        with pytest.raises(FilterError):
            await worker.recommend(_query("ann", filters={"price": {"between": 3}}))
        unknown = RecommendQuery(TENANT, "other", "ann", "v1", 5, None, True)
        assert await worker.recommend(unknown) is None  # not indexed there: answered here

        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while worker.state == "up" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert worker.state == "down"
        assert await worker.recommend(first) is None  # answered here meanwhile
        await asyncio.sleep(0.3)
        back = await _until_up(worker, first)
        assert back.source == "model"
        assert worker.pid not in (None, pid)
        await worker.close()

    if loop == "uvloop":
        uvloop.run(run())
    else:
        asyncio.run(run())
    assert worker.pid is None


def test_a_pool_shares_requests_among_its_workers_and_one_killed_leaves_the_other(
    stores: dict[str, Any],
) -> None:
    args = stores["args"].model_dump_json()
    pool = WorkerPool([RecommendWorker(args, LOG, restart_after_s=60) for _ in range(2)])
    service: RecommendService = stores["service"]

    async def run() -> None:
        first = _query("ann")
        assert await pool.recommend(first) is None  # none up yet: both start, answered here
        assert [w.state for w in pool.workers] == ["starting", "starting"]
        deadline = time.monotonic() + 90
        while not all(w.up for w in pool.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(set(pool.pids)) == 2
        served: list[int] = []
        for worker in pool.workers:  # which worker answered each request
            original = worker.recommend

            async def counted(q: RecommendQuery, w: RecommendWorker = worker,
                              call: Any = original) -> Recommendations | None:  # fmt: skip
                served.append(pool.workers.index(w))
                return await call(q)

            worker.recommend = counted  # type: ignore[method-assign]
        many = await asyncio.gather(*(pool.recommend(_query(u)) for u in ["ann", "bob"] * 8))
        index = stores["search"].catalogs[(TENANT, "shop")]
        assert all(g is not None for g in many)
        _same(many[0], await service.recommend_here(_query("ann"), index))  # type: ignore[arg-type]
        assert set(served) == {0, 1}  # both took requests while the other was busy

        pid = pool.workers[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pool.workers[0].up and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        served.clear()
        after = await asyncio.gather(*(pool.recommend(_query(u)) for u in ["ann", "bob"] * 4))
        assert all(g is not None for g in after)  # the other worker answers them all
        assert set(served) == {1}
        await pool.close()

    asyncio.run(run())
    assert pool.pids == []


def test_a_stalled_worker_is_replaced_and_its_requests_are_answered_here(
    stores: dict[str, Any],
) -> None:
    worker = RecommendWorker(stores["args"].model_dump_json(), LOG, stall_s=0.4, restart_after_s=60)

    async def run() -> None:
        await _until_up(worker, _query("ann"))
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            got = await asyncio.gather(*(worker.recommend(_query("bob")) for _ in range(3)))
            assert got == [None, None, None]
            assert time.monotonic() - started < 3
            assert worker.state == "down"
        finally:
            with contextlib.suppress(ProcessLookupError):  # replaced: killed
                os.kill(pid, signal.SIGCONT)
        await worker.close()

    asyncio.run(run())


@pytest.mark.parametrize("stores", ["redis"], indirect=True)
def test_with_redis_down_the_worker_answers_degraded_and_its_failures_are_counted(
    stores: dict[str, Any],
) -> None:
    failed: list[str] = []
    worker = RecommendWorker(stores["args"].model_dump_json(), LOG, store_failed=failed.append)

    async def run() -> None:
        known = await _until_up(worker, _query("ann"))
        assert (known.source, known.degraded) == ("model", False)
        assert failed == []
        stores["redis"].stop()
        got = await worker.recommend(_query("ann"))
        assert got is not None
        assert (got.source, got.degraded, got.process) == ("popular", True, "worker")
        assert len(got.hits) == 6
        assert failed == ["read"]
        await worker.close()

    asyncio.run(run())


def test_a_replicas_parts_all_close_whatever_one_of_them_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from deployments.pipelines.wiring import close_parts

    closed: list[str] = []

    class Part:
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        async def close(self) -> None:
            closed.append(self.name)
            if self.fails:
                raise OSError("disk gone")

    parts = [Part("worker", fails=True), None, Part("access"), Part("cache")]
    with caplog.at_level(logging.WARNING, logger="test"):
        asyncio.run(close_parts(parts, LOG))
    assert closed == ["worker", "access", "cache"]
    assert [r.message for r in caplog.records] == ["a part did not close"]
