"""Versions run inside the ingress replica: no process hop between HTTP and the model.

Each inline version has a batcher that never waits when idle: a request arriving
while no batch runs is dispatched at once; requests arriving while one runs are
gathered and go together as the next batch (up to `max_batch_size` requests); with
busy lanes (`busy_lanes`), the queue is split over that many one-thread runs at once.
Inference runs in worker threads (ONNX Runtime releases the GIL), so the event loop
keeps parsing and encoding other requests meanwhile; small requests are tokenized on
the loop as they arrive, so that thread rarely needs the GIL. The worker threads run
at a lower priority than the loop: under load, the loop's parsing and answering is
what keeps batches full. A small request that is the only one in the replica runs
right on the loop: there is nothing to overlap, and two thread hand-offs are saved.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from configs.schema import AppArgs, BatchLiveConfig, FaultInjection
from deployments.metrics import ModelMetrics
from deployments.model_server import EmbedResult, inject_fault, load_version, split_batch
from models import ArtifactStore
from models.text import Float32Array, TextEmbedder

# Requests up to this size are tokenized on the event loop as they arrive (about
# 20 us for a few short texts); larger ones in the inference thread.
LOOP_TOKENIZE_MAX_TEXTS = 16
LOOP_TOKENIZE_MAX_CHARS = 4096
# A request alone in the replica runs on the event loop up to this many tokens (a few
# ms at most); larger ones go to an inference thread, so the loop stays responsive.
LOOP_RUN_MAX_TOKENS = 512
# ... and only when the replica had been idle this long before it came (see Occupancy).
LOOP_RUN_IDLE_GAP_S = 0.0002
# How much lower than the event loop the inference threads run (nice steps).
INFERENCE_NICE_STEP = 4

# A queued request: its texts, their token ids when tokenized on arrival, its future.
_Pending = tuple[list[str], list[list[int]] | None, "asyncio.Future[EmbedResult]"]


class Occupancy:
    """The requests the replica is answering now (the ingress counts them), and whether
    the newest one came to an idle replica.

    A batcher runs a small request on the event loop only when it is the only one and
    the replica had been idle for `idle_gap_s` before it came. Right after a request
    ends, others may already wait unread in the sockets; the gap rule sends the next
    one to an inference thread, so runs on the loop never follow each other under load.
    """

    def __init__(self, idle_gap_s: float = LOOP_RUN_IDLE_GAP_S) -> None:
        self.requests = 0
        self._idle_gap_s = idle_gap_s
        self._idle_since = -idle_gap_s  # perf_counter time the count last fell to 0
        self._newest_came_to_idle = False

    def enter(self) -> None:
        """A request starts."""
        gap = time.perf_counter() - self._idle_since
        self._newest_came_to_idle = self.requests == 0 and gap >= self._idle_gap_s
        self.requests += 1

    def leave(self) -> None:
        """A request ends."""
        self.requests -= 1
        if self.requests == 0:
            self._idle_since = time.perf_counter()

    def claim_alone(self) -> bool:
        """True, once, while the replica's one request is one that came to an idle
        replica (once: its shadow copy, say, goes to a thread)."""
        if self.requests == 1 and self._newest_came_to_idle:
            self._newest_came_to_idle = False
            return True
        return False


class InlineBatcher:
    """Adaptive batching in front of one in-process runtime.

    A lone request gets the runtime's full session (all its intra-op threads). When
    requests queue up and the runtime has busy lanes, the queue is split across them:
    up to `busy_lanes` batches run at once, one thread each, so no run waits at a
    thread barrier for a core the others hold. The two kinds never overlap within a
    version; versions share the inference threads.
    """

    def __init__(
        self,
        runtime: TextEmbedder,
        metrics: ModelMetrics,
        executor: ThreadPoolExecutor,
        fault: FaultInjection | None = None,
        occupancy: Occupancy | None = None,
    ):
        self.runtime = runtime
        self._occupancy = occupancy
        self._fault = fault
        self.max_batch_size = BatchLiveConfig().max_batch_size
        self._metrics = metrics
        self._executor = executor
        self._queue: list[_Pending] = []
        self._lanes = runtime.busy_lanes
        self._running = 0  # batches in flight
        self._solo = False  # the one in flight has the full session

    async def embed(self, texts: list[str]) -> EmbedResult:
        """Vectors and token count for one request, batched with concurrent ones."""
        if self._fault is not None:
            await inject_fault(self._fault)
        # A small request is tokenized here, on the loop, while a batch may be running:
        # the inference thread then never waits for the GIL to tokenize. Large ones are
        # tokenized in the inference thread, so the loop never stalls on them.
        small = len(texts) <= LOOP_TOKENIZE_MAX_TEXTS and sum(map(len, texts)) <= (
            LOOP_TOKENIZE_MAX_CHARS
        )
        ids = self.runtime.tokenize(texts) if small else None
        if ids is not None and sum(map(len, ids)) <= LOOP_RUN_MAX_TOKENS and self._alone():
            return self._run_here(ids)
        future: asyncio.Future[EmbedResult] = asyncio.get_running_loop().create_future()
        self._queue.append((texts, ids, future))
        self._dispatch()
        return await future

    def _alone(self) -> bool:
        """Nothing else to overlap with: the replica's only request, which came to an
        idle replica, and no batch of this version running."""
        occupancy = self._occupancy
        return self._running == 0 and occupancy is not None and occupancy.claim_alone()

    def _run_here(self, ids: list[list[int]]) -> EmbedResult:
        """One small request on the event loop, on the full session."""
        started = time.perf_counter()
        vectors, tokens = self.runtime.embed_token_ids(ids)
        self._metrics.observe_batch(len(tokens), time.perf_counter() - started)
        return vectors, sum(tokens)

    def _dispatch(self) -> None:
        """Start what may start now: a lone request on the full session; a queue split
        over the free busy lanes; without lanes, the queue as one batch at a time."""
        while self._queue and not self._solo:
            if self._running == 0 and (self._lanes == 0 or len(self._queue) == 1):
                self._start(len(self._queue), solo=True)
            elif self._lanes > 0 and self._running < self._lanes:
                free = self._lanes - self._running
                self._start(-(-len(self._queue) // free), solo=False)
            else:
                return

    def _start(self, size: int, solo: bool) -> None:
        batch = self._queue[: min(size, self.max_batch_size)]
        del self._queue[: len(batch)]
        self._running += 1
        self._solo = solo
        asyncio.get_running_loop().create_task(self._run_batch(batch, busy=not solo))

    async def _run_batch(self, batch: list[_Pending], busy: bool) -> None:
        loop = asyncio.get_running_loop()
        parts = [(texts, ids) for texts, ids, _ in batch]
        started = time.perf_counter()
        try:
            vectors, tokens = await loop.run_in_executor(self._executor, self._run, parts, busy)
        except Exception as e:  # every waiter learns, none hangs
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(e)
        else:
            self._metrics.observe_batch(len(tokens), time.perf_counter() - started)
            results = split_batch([len(texts) for texts, _, _ in batch], vectors, tokens)
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._running -= 1
            self._solo = False
            self._dispatch()

    def _run(
        self, parts: list[tuple[list[str], list[list[int]] | None]], busy: bool
    ) -> tuple[Float32Array, list[int]]:
        """One batch in an inference thread: tokenize what is not yet, then embed."""
        ids = [
            row
            for texts, tokenized in parts
            for row in (tokenized if tokenized is not None else self.runtime.tokenize(texts))
        ]
        return self.runtime.embed_token_ids(ids, busy=busy)


def inference_executor(workers: int) -> ThreadPoolExecutor:
    """The inline versions' inference threads, each `INFERENCE_NICE_STEP` below the
    event loop's priority (raising one's own nice value needs no privilege)."""
    return ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="inline-infer", initializer=_lower_priority
    )


def _lower_priority() -> None:
    try:
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + INFERENCE_NICE_STEP))
    except (AttributeError, OSError):  # no per-thread priorities here: run as is
        pass


def load_inline(
    args: AppArgs, occupancy: Occupancy | None = None
) -> dict[tuple[str, str], InlineBatcher]:
    """Resolve and load every inline version; they share the inference threads (one,
    or as many as the most busy lanes a version has)."""
    if not args.inline_versions():
        return {}
    store = ArtifactStore(
        cache_dir=Path(args.artifact_cache_dir) if args.artifact_cache_dir else None
    )
    lanes = max(args.models[m].versions[v].busy_lanes for m, v in args.inline_versions())
    executor = inference_executor(lanes)
    out = {}
    for model, version in args.inline_versions():
        spec = args.models[model].versions[version]
        runtime = load_version(model, version, spec, args.artifact_root, store, inline=True)
        out[(model, version)] = InlineBatcher(
            runtime, ModelMetrics(model, version), executor, spec.fault_injection, occupancy
        )
    return out
