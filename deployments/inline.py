"""Versions run inside the ingress replica: no process hop between HTTP and the model.

Each inline version has a batcher that never waits when idle: a request arriving
while no batch runs is dispatched at once; requests arriving while one runs are
gathered and go together as the next batch (up to `max_batch_size` requests); with
busy lanes (`busy_lanes`), the queue is split over that many one-thread runs at once.
Inference runs in worker threads (ONNX Runtime releases the GIL), so the event loop
keeps parsing and encoding other requests meanwhile; small requests are tokenized on
the loop as they arrive, so that thread rarely needs the GIL. The worker threads run
at a lower priority than the loop: under load, the loop's parsing and answering is
what keeps batches full.
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
# How much lower than the event loop the inference threads run (nice steps).
INFERENCE_NICE_STEP = 4

# A queued request: its texts, their token ids when tokenized on arrival, its future.
_Pending = tuple[list[str], list[list[int]] | None, "asyncio.Future[EmbedResult]"]


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
    ):
        self.runtime = runtime
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
        future: asyncio.Future[EmbedResult] = asyncio.get_running_loop().create_future()
        # A small request is tokenized here, on the loop, while a batch may be running:
        # the inference thread then never waits for the GIL to tokenize. Large ones are
        # tokenized in the inference thread, so the loop never stalls on them.
        small = len(texts) <= LOOP_TOKENIZE_MAX_TEXTS and sum(map(len, texts)) <= (
            LOOP_TOKENIZE_MAX_CHARS
        )
        self._queue.append((texts, self.runtime.tokenize(texts) if small else None, future))
        self._dispatch()
        return await future

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


def load_inline(args: AppArgs) -> dict[tuple[str, str], InlineBatcher]:
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
            runtime, ModelMetrics(model, version), executor, spec.fault_injection
        )
    return out
