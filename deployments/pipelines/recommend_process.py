"""Recommendations in a process of their own beside the Ingress replica.

A recommendation is Python from end to end (features, the user tower's inputs, the
candidates, the ranker's features), and one process runs one thread of Python at a
time: in the Ingress it shares that thread with every request's HTTP, auth, limits and
encoding, while the second core idles. The worker is a plain child process of the
replica (no Ray in it: about a hundred megabytes) with the same recommender versions,
the same stores (the catalog store it follows like any replica, the online features,
the event log) and a `RecommendService` of its own. The Ingress keeps the request
path (parsing, the key, limits, version choice, metrics, encoding) and hands each
recommendation over a Unix socket: one length-prefixed JSON frame each way.

It starts at a replica's first recommendation (a replica that never serves one never
pays its memory) and answers once it has caught up with the catalog store. Until then,
while it restarts after a crash, for a version or catalog it has not indexed yet, or when
it has not answered for `STALL_S`, the Ingress answers on its own event loop, as it
would without a worker: a caller never waits for the worker to come back. The worker
reads its stdin until the end: when the replica goes (however it goes), so does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from logging import Logger
from pathlib import Path
from typing import Any, cast

import orjson

from configs.settings import PROJECT_ROOT
from deployments.pipelines.catalog_index import Hit
from deployments.pipelines.filters import FilterError
from deployments.pipelines.recommend import Recommendations, RecommendQuery
from stores.catalog import Item

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
START_TIMEOUT_S = 120.0  # catalogs to load and index before the first answer
STALL_S = 2.0  # requests waiting this long with no answer: the worker is replaced
RESTART_AFTER_S = 5.0  # after a worker failed, before the next one starts; doubling
RESTART_MAX_S = 300.0  # while they keep failing, up to this
READY = b"ready\n"


def frame(doc: Any) -> bytes:
    """One message: its length (4 bytes, big-endian), then its JSON."""
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if len(body) > MAX_FRAME:  # the other side would refuse it and drop the connection
        raise ValueError(f"a frame of {len(body)} bytes")
    return _HEADER.pack(len(body)) + body


class Frames:
    """Splits a byte stream into messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """The messages `data` completes, in order."""
        self._buffer += data
        out = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise ValueError(f"a frame of {size} bytes")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            out.append(orjson.loads(bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return out


def query_doc(q: RecommendQuery) -> list[Any]:
    """A query as the wire carries it."""
    return [q.tenant, q.catalog, q.user, q.version, q.k, q.filters, q.exclude_seen,
            q.context_item]  # fmt: skip


def query_of(doc: list[Any]) -> RecommendQuery:
    """The query `query_doc` wrote."""
    return RecommendQuery(*doc)


def answer_doc(got: Recommendations) -> dict[str, Any]:
    """An answer as the wire carries it (whole items: the worker's view of the catalog)."""
    return {
        "hits": [[h.item.id, h.score, h.item.text, h.item.attributes] for h in got.hits],
        "source": got.source,
        "degraded": got.degraded,
        "candidates": got.candidates,
        "timings_ms": got.timings_ms,
    }


def answer_of(doc: dict[str, Any]) -> Recommendations:
    """The answer `answer_doc` wrote."""
    hits = [Hit(Item(i, text, attrs), score) for i, score, text, attrs in doc["hits"]]
    return Recommendations(hits, doc["source"], doc["degraded"], doc["candidates"],
                           doc["timings_ms"], "worker")  # fmt: skip


# ---- the Ingress's side ---------------------------------------------------------------


class _Answers(asyncio.Protocol):
    """The worker's answers, each to the request waiting for it."""

    def __init__(self, on_lost: Callable[[_Answers], None]) -> None:
        self.frames = Frames()
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.last_answer = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (a replica's loop) are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_answer = time.monotonic()
        for number, answer in self.frames.feed(data):
            future = self.waiting.pop(number, None)
            if future is not None and not future.done():
                future.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(self)


class RecommendWorker:
    """The Ingress's handle on its recommendation worker (see the module)."""

    def __init__(
        self,
        args_json: str,
        log: Logger,
        stall_s: float = STALL_S,
        restart_after_s: float = RESTART_AFTER_S,
        here_when: Callable[[], bool] | None = None,
        store_failed: Callable[[str], None] | None = None,
    ) -> None:
        """`here_when`: whether to answer on the caller's loop even with the worker up
        (a replica serving one request at a time: the hand-over would only add latency)."""
        self.here_when = here_when
        # Where the worker's online-store failures are counted (the replica's meter).
        self.store_failed = store_failed
        self.args_json = args_json
        self.log = log
        self.stall_s = stall_s
        self.restart_after_s = restart_after_s
        self.state = "idle"  # starting, up, down (restarts after RESTART_AFTER_S)
        self._process: asyncio.subprocess.Process | None = None
        self._answers: _Answers | None = None
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._down_since = 0.0
        self._failures = 0  # in a row: the wait before the next start doubles
        self._ended: list[asyncio.subprocess.Process] = []  # killed, to be reaped
        self._next = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def up(self) -> bool:
        """Whether it is up and connected: a request would be handed to it."""
        answers = self._answers
        return self.state == "up" and answers is not None and answers.transport is not None

    @property
    def waiting(self) -> int:
        """Its requests waiting for an answer."""
        return len(self._answers.waiting) if self._answers is not None else 0

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs."""
        return self._process.pid if self._process is not None else None

    async def recommend(self, q: RecommendQuery, copy: bool = False) -> Recommendations | None:
        """The worker's answer, or None when the caller should answer here (not started,
        restarting, stalled, `here_when`, or the worker has not indexed the version or
        catalog). `copy`: a shadow copy nobody waits for, handed over whatever
        `here_when` says (it is about callers' latency; a copy must not run here)."""
        answers = self._answers
        if not self.up or answers is None or answers.transport is None:
            self.start_if_due()
            return None
        if not copy and self.here_when is not None and self.here_when():
            return None
        self._next += 1
        number = self._next
        try:
            data = frame([number, query_doc(q)])
        except (TypeError, ValueError):  # a value JSON cannot carry, or too big: here
            return None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not answers.waiting:
            answers.last_answer = time.monotonic()  # the stall clock starts now
        answers.waiting[number] = future
        answers.transport.write(data)
        try:
            # A whole stalled worker is noticed by `_watch_stalls` within `stall_s`; one
            # answer lost while others flow is given up on here, twice that late.
            doc = await asyncio.wait_for(future, 2 * self.stall_s)
        except TimeoutError:
            self.log.warning("recommendation answer overdue: answered here")
            return None
        finally:
            answers.waiting.pop(number, None)
        if doc is not None:
            self._failures = 0  # it answers: the next restart waits the least again
        if doc is None or "error" in doc:
            if doc is not None and doc["error"] == "filter":
                raise FilterError(doc["detail"])
            return None
        if self.store_failed is not None:
            for op, n in doc.get("store_failed", {}).items():
                for _ in range(n):
                    self.store_failed(op)
        return answer_of(doc)

    def start_if_due(self) -> None:
        """Start it when it never ran, or when it failed and its restart wait is over."""
        wait_s = min(RESTART_MAX_S, self.restart_after_s * 2 ** max(0, self._failures - 1))
        due = self.state == "idle" or (
            self.state == "down" and time.monotonic() - self._down_since > wait_s
        )
        if due:
            self.state = "starting"
            self._task = asyncio.create_task(self._start())

    async def _start(self) -> None:
        started = time.monotonic()
        try:
            self._tmp = tempfile.TemporaryDirectory(prefix="servekit-rec-")
            socket_path = str(Path(self._tmp.name) / "worker.sock")
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
            )
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "deployments.pipelines.recommend_process", socket_path,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                cwd=str(PROJECT_ROOT), env=env,
            )  # fmt: skip
            assert self._process.stdin is not None
            assert self._process.stdout is not None
            self._process.stdin.write(self.args_json.encode() + b"\n")
            await self._process.stdin.drain()
            line = await asyncio.wait_for(self._process.stdout.readline(), START_TIMEOUT_S)
            if line != READY:
                raise RuntimeError("the worker stopped before it was ready")
            loop = asyncio.get_running_loop()
            _, answers = await loop.create_unix_connection(
                lambda: _Answers(self._lost), socket_path
            )
            self._answers = answers
            # Connected: the socket's name is no longer needed, and a replica killed
            # later leaves no folder behind.
            self._tmp.cleanup()
            self._tmp = None
            # `_failures` goes back to 0 at its first answer, not here: a worker that
            # dies soon after each start is restarted ever later.
            self.state = "up"
            self._watch = asyncio.create_task(self._watch_stalls())
            self.log.info(
                "recommendation worker up",
                extra={"fields": {"pid": self._process.pid,
                                  "seconds": round(time.monotonic() - started, 2)}},
            )  # fmt: skip
        except Exception as e:
            self.log.warning(
                "recommendation worker did not start",
                extra={"fields": {"error": type(e).__name__, "detail": str(e)[:300]}},
            )
            self._fail()

    async def _watch_stalls(self) -> None:
        """A worker with requests waiting and no answer for `stall_s` is replaced; its
        requests are answered here."""
        while self.state == "up":
            await asyncio.sleep(self.stall_s / 4)
            answers = self._answers
            if answers is None or not answers.waiting:
                continue
            if time.monotonic() - answers.last_answer > self.stall_s:
                self.log.warning(
                    "recommendation worker stalled: replaced",
                    extra={"fields": {"waiting": len(answers.waiting)}},
                )
                self._fail()

    def _lost(self, answers: _Answers) -> None:
        if self.state == "up" and answers is self._answers:  # not an earlier worker's
            self.log.warning("recommendation worker gone: answering here until it is back")
            self._fail()

    def _fail(self) -> None:
        """Answer every waiting request here, stop the worker, restart it later."""
        self.state, self._down_since = "down", time.monotonic()
        self._failures += 1
        answers, self._answers = self._answers, None
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        if answers is not None:
            for future in answers.waiting.values():
                if not future.done():
                    future.set_result(None)
            answers.waiting.clear()
            if answers.transport is not None:
                answers.transport.close()
        self._kill()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            self._ended = [p for p in self._ended if p.returncode is None] + [process]
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def close(self) -> None:
        """Stop the worker (the replica is going)."""
        for task in (self._task, self._watch):
            if task is not None and not task.done():
                task.cancel()
        self._fail()
        self.state = "closed"
        for process in self._ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
        self._ended = []


class WorkerPool:
    """Several recommendation workers beside one replica (`worker_processes`): each
    request goes to the worker with the fewest answers outstanding among those up; with
    none up it is answered here, and the workers due to start, start."""

    def __init__(self, workers: list[RecommendWorker]) -> None:
        self.workers = workers

    @property
    def pids(self) -> list[int]:
        """The running workers' process ids."""
        return [w.pid for w in self.workers if w.pid is not None]

    async def recommend(self, q: RecommendQuery) -> Recommendations | None:
        """The least busy worker's answer, or None: answer here."""
        up = []
        for worker in self.workers:
            if worker.up:
                up.append(worker)
            else:
                worker.start_if_due()
        if not up:
            return None
        return await min(up, key=lambda w: w.waiting).recommend(q)

    async def close(self) -> None:
        """Stop every worker, whatever each of the others does."""
        await asyncio.gather(*(w.close() for w in self.workers), return_exceptions=True)


# ---- the worker's side ----------------------------------------------------------------


class _StoreErrors:
    """The feature service's meter in the worker: its store failures, handed to the
    Ingress with the next answer (the replica's metrics count them)."""

    def __init__(self) -> None:
        self.failed: dict[str, int] = {}

    def events_seen(self, accepted: int, rejected: int) -> None:
        """The worker ingests no events."""

    def store_failed(self, op: str) -> None:
        """One failed store call (`read`)."""
        self.failed[op] = self.failed.get(op, 0) + 1

    def take(self) -> dict[str, int]:
        """The failures since the last call."""
        failed, self.failed = self.failed, {}
        return failed


class _Requests(asyncio.Protocol):
    """The Ingress's requests on one connection, each answered as it completes."""

    def __init__(self, answer: Callable[[list[Any]], Any]) -> None:
        self.frames = Frames()
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (a replica's loop) are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for number, query in self.frames.feed(data):
            task = asyncio.create_task(self._one(number, query))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, number: int, query: list[Any]) -> None:
        try:
            doc = await self.answer(query)
        except FilterError as e:
            doc = {"error": "filter", "detail": str(e)}
        except Exception as e:  # answered by the Ingress instead
            doc = {"error": type(e).__name__}
        try:
            data = frame([number, doc])
        except (TypeError, ValueError):  # not for JSON, or too big: the Ingress answers
            data = frame([number, {"error": "encode"}])
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def serve_worker(args_json: str, socket_path: str) -> None:
    """The worker: load, catch up with the catalog store, answer until stdin ends."""
    from configs.features import load_definitions
    from configs.schema import AppArgs
    from deployments.observability.logs import get_logger
    from deployments.pipelines.features import FeatureService
    from deployments.pipelines.features_wiring import catalog_items, open_online_store
    from deployments.pipelines.recommend import PopularItems, RecommendService
    from deployments.pipelines.search import SearchService
    from deployments.pipelines.wiring import space_artifacts
    from deployments.replicas.recommender_backend import load_recommenders
    from deployments.tenancy.access import registry_url
    from stores.catalog_sql import open_catalog_store
    from stores.events_sql import open_event_log
    from stores.secrets import load_secrets

    args = AppArgs.model_validate_json(args_json)
    model = args.recommender()
    if model is None:
        raise SystemExit("no recommender in the args")
    log = get_logger("recommend.worker")
    dsn = registry_url(load_secrets())

    async def no_texts(tenant: str, space: str, texts: list[str]) -> Any:
        raise RuntimeError("the recommendation worker embeds no text")

    search = SearchService(
        open_catalog_store(dsn),
        no_texts,
        args.search.follow_s,
        log,
        space_artifacts=space_artifacts(args),
    )
    errors = _StoreErrors()
    features = FeatureService(
        load_definitions(args.features.definitions),
        open_online_store(args.features.store_timeout_s, log),
        open_event_log(dsn),
        catalog_items(search),
        log,
        errors,
    )
    versions = {v: b.recommender for (_, v), b in load_recommenders(args).items()}
    service = RecommendService(
        model, versions, search, features,
        PopularItems(features.events, args.recommendations, log,
                     features.definitions.weights()), args.recommendations,
    )  # fmt: skip
    search.item_model = (model, service.item_vectors)
    await search.start([service.space(v) for v in versions])

    async def answer(doc: list[Any]) -> dict[str, Any]:
        q = query_of(doc)
        index = search.catalogs.get((q.tenant, q.catalog))
        if index is None or not index.complete(service.space(q.version)):
            return {"error": "not_indexed"}
        out = answer_doc(await service.recommend(q))
        if failed := errors.take():
            out["store_failed"] = failed
        return out

    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _Requests(answer), socket_path)
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    # The replica reads nothing after that line: whatever a library prints from now on
    # goes to stderr (the replica's log) and never fills a pipe no one drains.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Until the replica goes: its end of stdin closes then, however it ended.
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    server.close()
    # The replica's temporary folder: it may have gone without removing it.
    shutil.rmtree(Path(socket_path).parent, ignore_errors=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(search.close(), 5)


def main() -> None:
    """`python -m deployments.pipelines.recommend_process SOCKET`, the args on stdin."""
    from configs.settings import tune_interpreter

    tune_interpreter()
    args_json = sys.stdin.buffer.readline().decode()
    asyncio.run(serve_worker(args_json, sys.argv[1]))


if __name__ == "__main__":
    main()
