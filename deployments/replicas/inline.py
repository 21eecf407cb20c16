"""Versions run inside the ingress replica: no process hop between HTTP and the model.

Each inline version has a batcher (a dedicated version's replica runs the same one,
where `batch_wait_s` may hold an idle replica's first request back a little) that
never waits when idle: a request arriving
while no batch runs is dispatched at once; requests arriving while one runs are
gathered and go together as the next batch (up to `max_batch_size` requests and
`max_batch_texts` texts); with busy lanes (`busy_lanes`), the queue is split over
that many one-thread runs at once (a lane that frees while another runs takes the share
that ends the queue soonest, not all of it). The versions of a replica share its
inference threads (`threads.SharedThreads`): a batch starts only on a free thread, and
a lone request's run on a full session of several threads never overlaps another batch
of any version (beside others, it runs on a busy lane instead).
The queue is bounded in time and in texts: a request that would not fit in the next
batch and would wait longer than `max_queue_wait_s` (the batches running and the
texts ahead of it, every version's, by each version's measured batch cost, see
`batch_cost`), or find more than `max_queued_texts` waiting, is refused at once with
a 503, so the ones admitted never wait long, whatever the hardware. A queued request
whose caller has gone (timed out, disconnected) or whose deadline has passed is
dropped before it runs, and counted.

Inference runs in worker threads (ONNX Runtime releases the GIL), so the event loop
keeps parsing and encoding other requests meanwhile; small requests are tokenized on
the loop as they arrive, so that thread rarely needs the GIL. The worker threads run
at a lower priority than the loop: under load, the loop's parsing and answering is
what keeps batches full. A replica serving one caller at a time (`traffic`) runs a
lone small request on the loop itself: nothing else waits for the loop then, and the
hand-off to a thread and back is spared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from configs.schema import FaultInjection, InlineBatchingConfig
from deployments.errors import Overloaded, Timeout
from deployments.replicas.backend import SHADOW_COPY, EmbedResult, split_batch
from deployments.replicas.batch_cost import BatchCost
from deployments.replicas.loading import Wedge, inject_fault
from deployments.replicas.threads import SharedThreads
from deployments.replicas.traffic import Traffic
from models.text import Float32Array, TextEmbedder

# Requests up to this size are tokenized on the event loop as they arrive (about
# 20 us for a few short texts); larger ones in the inference thread.
LOOP_TOKENIZE_MAX_TEXTS = 16
LOOP_TOKENIZE_MAX_CHARS = 4096
# The longest run (by the measured batch cost) a replica serving one request at a time
# makes on its event loop rather than in an inference thread.
LOOP_RUN_MAX_S = 0.02
# A replica logs its refusals for time at most this often per version (a burst of 503s
# is one line, with how many were refused since the last).
REFUSAL_LOG_EVERY_S = 10.0
# What the batch cost is calibrated with at load: about the length of a product's
# title and description (some 50 tokens), not a word, whose cost would be all overhead.
CALIBRATION_TEXT = (
    "Lightweight waterproof trail running shoe with a breathable mesh upper, a cushioned "
    "midsole and a grippy rubber outsole for muddy mountain paths, in forest green."
)


log = logging.getLogger("servekit.batching")


class BatchMetrics(Protocol):
    """Where a batcher reports its batches and the work it dropped."""

    def observe_batch(self, inputs: int, seconds: float) -> None:
        """One model run of `inputs` texts."""

    def dropped(self, reason: str, requests: int = 1) -> None:
        """Requests not run: `queue_full`, `expired` or `cancelled`."""


class RunWatcher(Protocol):
    """Told when model runs start and end (the version's health probe)."""

    def run_started(self) -> int:
        """A run begins; returns a token."""

    def run_finished(self, token: int, ok: bool = True) -> None:
        """The run of `token` ended."""


@dataclass
class _Pending:
    """A queued request: its texts, their token ids when tokenized on arrival, its
    deadline (`time.monotonic()`, or None), its future and when it arrived."""

    texts: list[str]
    ids: list[list[int]] | None
    deadline: float | None
    future: asyncio.Future[EmbedResult]
    arrived: float = field(default_factory=time.perf_counter)


class InlineBatcher:
    """Adaptive batching in front of one in-process runtime.

    A lone request gets the runtime's full session (all its intra-op threads). When
    requests queue up and the runtime has busy lanes, the queue is split across them:
    up to `busy_lanes` batches run at once, one thread each, so no run waits at a
    thread barrier for a core the others hold. The two kinds never overlap, within a
    version or across the versions sharing the inference threads (`threads`), each
    batch holding one: while a full-session run of several threads goes, no other
    batch starts, and it starts only while no other batch runs (else the lone request
    runs on a lane; without lanes, it waits for every thread). A full session of one
    thread (`intra_op_threads: 1`) is a lane as far as the others are concerned.
    """

    def __init__(
        self,
        runtime: TextEmbedder,
        metrics: BatchMetrics,
        threads: SharedThreads,
        fault: FaultInjection | None = None,
        watcher: RunWatcher | None = None,
        traffic: Traffic | None = None,
        label: str = "",
    ):
        self.runtime = runtime
        self.label = label  # model/version, in the log
        # The replica's requests in flight: while it serves one at a time, a small
        # request runs on the event loop (None: always in the inference threads).
        self._traffic = traffic
        self._fault = fault
        self.configure(InlineBatchingConfig())
        self._metrics = metrics
        self._threads = threads
        self._watcher = watcher
        self.wedge = Wedge()
        self._queue: list[_Pending] = []
        self._queued_texts = 0
        # How long a batch of n texts takes, measured per kind of run: on the full
        # session (a lone request; every batch without lanes) and on one busy lane,
        # which takes about twice as long per text: one model judging both would
        # see a burst's batches at the speed of the lone requests before it.
        self.cost = BatchCost()
        self.lane_cost = BatchCost()
        self._lanes = min(runtime.busy_lanes, threads.workers)
        # Whether a run on the full session takes several cores (on CPU, more than one
        # intra-op thread; 0 lets the runtime take one per core): it then runs only
        # with no other batch beside it, of any version (see `threads`).
        self._wide = runtime.device_name == "cpu" and runtime.options.intra_op_threads != 1
        self._waiting: asyncio.TimerHandle | None = None
        self._waited = False  # the queue waited once; it goes next, full or not
        self._refused_since_log = 0
        self._refusal_logged_at = -REFUSAL_LOG_EVERY_S
        self._refusal_tail: asyncio.TimerHandle | None = None
        threads.join(self)

    def configure(self, live: InlineBatchingConfig, batch_wait_s: float = 0.0) -> None:
        """Apply live batching settings (the next batch uses them). `batch_wait_s`: how
        long a request arriving while no batch runs waits for others (0: not at all)."""
        self.batch_wait_s = batch_wait_s
        self.max_batch_size = live.max_batch_size
        self.max_batch_texts = live.max_batch_texts
        self.max_queued_texts = live.max_queued_texts
        self.max_queue_wait_s = live.max_queue_wait_s

    def watch(self, watcher: RunWatcher) -> None:
        """Tell `watcher` when each model run starts and ends."""
        self._watcher = watcher

    def threads_idle(self) -> bool:
        """Whether the shared inference threads run nothing and nothing waits for them."""
        return self._threads.idle()

    @property
    def queued_texts(self) -> int:
        """Texts waiting for a batch."""
        return self._queued_texts

    async def embed(
        self, texts: list[str], deadline: float | None = None, probe: bool = False
    ) -> EmbedResult:
        """Vectors and per-text token counts for one request, batched with concurrent ones.
        Refused at once (`Overloaded`) when the queue is full; dropped unrun when
        `deadline` passes or the caller goes away while it waits. `probe`: a health
        probe, which tests the runtime, so the version's injected faults skip it."""
        if self._fault is not None and not probe:
            await inject_fault(self._fault)
        if not probe:
            self._admit(len(texts))
        future: asyncio.Future[EmbedResult] = asyncio.get_running_loop().create_future()
        # A small request is tokenized here, on the loop, while a batch may be running:
        # the inference thread then never waits for the GIL to tokenize. Large ones are
        # tokenized in the inference thread, so the loop never stalls on them.
        small = len(texts) <= LOOP_TOKENIZE_MAX_TEXTS and sum(map(len, texts)) <= (
            LOOP_TOKENIZE_MAX_CHARS
        )
        ids = self.runtime.tokenize(texts) if small else None
        if ids is not None and not probe and self._runs_here(len(texts), deadline):
            return self._run_here(texts, ids)
        self._queue.append(_Pending(texts, ids, deadline, future))
        self._queued_texts += len(texts)
        self._dispatch()
        return await future

    def _runs_here(self, texts: int, deadline: float | None) -> bool:
        """Whether a small request runs on the event loop: the replica serves one request
        at a time (see `traffic`), nothing is queued or running on any inference thread,
        no fill wait is set, the run is short, the deadline has not passed (the queue
        drops such work) and the runtime is not wedged (a probe never runs here: it
        must notice a runtime that hangs; nor a shadow copy, which the caller's request,
        still being answered, or the next one would wait for)."""
        return (
            self._traffic is not None
            and not SHADOW_COPY.get()
            and not self._queue
            and self._threads.free() == self._threads.workers
            and self._traffic.sequential()
            and (deadline is None or time.monotonic() < deadline)
            and self.batch_wait_s <= 0
            and not self.wedge.engaged
            and (cost := self.cost.seconds(texts, self.max_batch_texts)) is not None
            and cost <= LOOP_RUN_MAX_S
        )

    def _run_here(self, texts: list[str], ids: list[list[int]]) -> EmbedResult:
        """One lone request's run on the event loop, on the full session: the hand-off
        to an inference thread and back (about 0.15 ms, and a thread waking on a core
        that idled) is spared; the loop has nothing else to do meanwhile."""
        token = self._watcher.run_started() if self._watcher else 0
        ok = False
        try:
            vectors, tokens, seconds = self._run([(texts, ids)], False)
            ok = True
        finally:
            if self._watcher:
                self._watcher.run_finished(token, ok)
        self._metrics.observe_batch(len(tokens), seconds)
        self.cost.observe(len(tokens), seconds)
        (result,) = split_batch([len(texts)], vectors, tokens)
        return result

    def expected_wait_s(self, texts: int) -> float:
        """How long a request of `texts` would wait for its answer, by the measured
        batch cost of the kind of run that will take it (0 until a batch has been
        measured). With nothing running: the queue with it as the next batch. Without
        lanes (or with one): until this version's batch running ends (with none, and
        every thread held, the first thread to free; a full-session run of several
        threads waits for every thread), then the queue. With lanes, the queue is
        shared by the threads as they free (see `_lane_share`): the work running and
        queued, this version's and the other versions' (ahead of it), over the lanes,
        each batch paying its fixed part, and never less than the first thread to free
        running this request alone. A lone run on the full session (this version's, or
        any version's of several threads) holds every lane until it ends."""
        busy = self._runs_busy(len(self._queue) + 1)
        cost = self._cost(busy)
        queue = cost.seconds(self._queued_texts + texts, self.max_batch_texts)
        held = self._threads.remaining_s()
        if queue is None or not held:
            return queue or 0.0
        mine = self._threads.remaining_s(self)
        if self._lanes < 2:
            if mine:
                first = min(mine)
            elif self._wide and self._lanes == 0:
                first = max(held)
            else:
                first = min(held) if self._threads.free() < 1 else 0.0
            return queue + first
        lanes = self._lanes
        ahead = sum(held) + self._threads.queued_s(besides=self) + queue
        first = min(held)
        whole = None  # what is left of a run on a full session, which holds every lane
        if mine and self._solo:
            whole = mine[0]
        elif self._threads.wide:  # another version's, the only batch running
            whole = max(held)
        if whole is not None:
            ahead += (lanes - 1) * whole
            first = whole
        shared = (ahead + (lanes - 1) * cost.fixed_s) / lanes
        return max(shared, first + self.batch_seconds(texts, busy))

    def batch_seconds(self, texts: int, busy: bool = False) -> float:
        """How long a batch of `texts` texts runs on the full session or (`busy`) on a
        busy lane, by the measured cost (0 before)."""
        return self._cost(busy).seconds(texts, self.max_batch_texts) or 0.0

    def queued_seconds(self) -> float:
        """How long the queued requests take to run, by the measured cost."""
        return self.batch_seconds(self._queued_texts, self._runs_busy(len(self._queue)))

    @property
    def _solo(self) -> bool:
        """Whether this version's batch in flight is a lone run on the full session."""
        return any(not busy for _, _, busy in self._threads.held_by(self))

    def _cost(self, busy: bool) -> BatchCost:
        """The cost model of a run on a busy lane (`busy`) or on the full session; the
        full session's until a lane run was measured."""
        lane = busy and self._lanes > 0 and self.lane_cost.per_text_s is not None
        return self.lane_cost if lane else self.cost

    def _runs_busy(self, requests: int) -> bool:
        """Whether `requests` queued requests run on busy lanes: with lanes, when they
        are more than one, a batch of this version runs on a lane, or (a full session
        of several threads) another version's batch runs (a lone request after a lone
        run gets the full session)."""
        if self._lanes == 0:
            return False
        if requests > 1:
            return True
        mine = self._threads.held_by(self)
        return any(busy for _, _, busy in mine) or (
            self._wide and not mine and self._threads.free() < self._threads.workers
        )

    def head_arrival(self) -> float | None:
        """When the oldest queued request arrived; None with none queued."""
        return self._queue[0].arrived if self._queue else None

    def _lane_share(self, free: int) -> int:
        """How many queued requests a lane that frees takes. With other lanes free too,
        an even share. With the others busy, the share that ends the queue soonest: what
        it takes against what is left, which the next lane to free takes when its batch
        ends; taking the whole queue would leave that lane idle while this one runs
        twice as long (a few large requests answered one lane's run late, each time)."""
        held = self._threads.remaining_s()
        if free > 1 or self._cost(True).per_text_s is None or not held:
            return -(-len(self._queue) // free)
        other = min(held)
        total = self._queued_texts
        best, best_end = 1, float("inf")
        for k, taken in enumerate(self._batch_texts(len(self._queue)), start=1):
            mine = self.batch_seconds(taken, busy=True)
            rest = self.batch_seconds(total - taken, busy=True)
            end = max(mine, other + rest if taken < total else 0.0)
            if end <= best_end:  # on a tie, the larger batch
                best, best_end = k, end
        return best

    def calibrate(self) -> None:
        """Time two runs (one text, then several) on the full session, and with lanes
        two on a busy lane, so the first requests' waits are judged by measured batch
        costs; the runtime is loaded and warmed up."""
        self.cost.calibrate(lambda n: self._calibration_run(n, busy=False))
        if self._lanes > 0:
            self.lane_cost.calibrate(lambda n: self._calibration_run(n, busy=True))

    def _calibration_run(self, texts: int, busy: bool) -> None:
        self.runtime.embed_token_ids(self.runtime.tokenize([CALIBRATION_TEXT] * texts), busy=busy)

    def _admit(self, texts: int) -> None:
        """Refuse a request that would wait too long. A version with nothing queued
        admits any request, so a large one is never refused for its size alone. Nor is
        one that joins the next batch (the queue and it fit in one) when that batch
        itself takes no longer than the bound: what is left of the batch in flight is
        spent whatever is refused, so refusing it would only turn a slow phase of the
        machine (a replica starting beside this one) into errors."""
        if not self._queue:
            return
        if self._queued_texts + texts > self.max_queued_texts or (
            self.expected_wait_s(texts) > self.max_queue_wait_s
        ):
            self._drop_gone()  # texts nobody waits for any more take no room
        joins_next = (
            self._queued_texts + texts <= self.max_batch_texts
            and len(self._queue) < self.max_batch_size
            and self.batch_seconds(
                self._queued_texts + texts, self._runs_busy(len(self._queue) + 1)
            )
            <= self.max_queue_wait_s
        )
        if self._queued_texts + texts > self.max_queued_texts:
            reason = f"{self._queued_texts} texts already wait for this version"
        elif not joins_next and (wait := self.expected_wait_s(texts)) > self.max_queue_wait_s:
            reason = f"the wait would be about {wait:.2f} s, over {self.max_queue_wait_s:g} s"
        else:
            return
        self._metrics.dropped("queue_full")
        self._log_refusal(reason)
        raise Overloaded(f"{reason}, retry later")

    def _log_refusal(self, reason: str) -> None:
        """One warning per `REFUSAL_LOG_EVERY_S` with what the estimate was made of: an
        operator reading a 503 sees whether the queue was long or the measured batch
        cost was high (a slow phase of the machine)."""
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._refusal_logged_at < REFUSAL_LOG_EVERY_S:
            if self._refusal_tail is None:  # the burst's end gets a line of its own
                wait = self._refusal_logged_at + REFUSAL_LOG_EVERY_S - now
                self._refusal_tail = asyncio.get_running_loop().call_later(
                    wait, self._log_refusal_tail
                )
            return
        lane, full = self.lane_cost, self.cost
        log.warning(
            "request refused: %s (%d refused since the last line); version=%s "
            "queued=%d requests/%d texts running=%s; "
            "batch cost: full session %.2f ms + %.2f ms/text, busy lane %s",
            reason,
            self._refused_since_log,
            self.label,
            len(self._queue),
            self._queued_texts,
            [f"{r * 1000:.1f} ms left" for r in self._threads.remaining_s()],
            full.fixed_s * 1000,
            (full.per_text_s or 0.0) * 1000,
            "unmeasured"
            if lane.per_text_s is None
            else f"{lane.fixed_s * 1000:.2f} ms + {lane.per_text_s * 1000:.2f} ms/text",
        )
        self._refused_since_log = 0
        self._refusal_logged_at = now

    def _log_refusal_tail(self) -> None:
        """The refusals held back since the last line, once the interval has passed
        (a burst shorter than the interval would otherwise end unsaid)."""
        self._refusal_tail = None
        if self._refused_since_log:
            log.warning(
                "%d more requests refused in the %g s after the last line; version=%s",
                self._refused_since_log,
                REFUSAL_LOG_EVERY_S,
                self.label,
            )
            self._refused_since_log = 0
            self._refusal_logged_at = time.monotonic()

    def _dispatch(self) -> None:
        """Start what may start now, on the threads the versions share."""
        self._threads.dispatch()

    def start_next(self) -> bool:
        """Start this version's next batch on a free thread if it may now: a lone request
        on the full session (one of several threads only while no batch of any version
        runs, else on a free busy lane); a share of the queue on a free busy lane;
        without lanes, the queue as one batch at a time. Whether it started one."""
        self._drop_gone()
        if not self._queue or self._solo:
            return False
        running = len(self._threads.held_by(self))
        if running == 0 and self._wait_to_fill():
            return False
        if (
            running == 0
            and (self._lanes == 0 or len(self._queue) == 1)
            and (not self._wide or self._threads.free() == self._threads.workers)
        ):
            self._start(len(self._queue), solo=True)
        elif self._lanes > 0 and running < self._lanes:
            free = min(self._lanes - running, self._threads.free())
            self._start(self._lane_share(free), solo=False)
        else:
            return False
        return True

    def waits_for_every_thread(self) -> bool:
        """Whether the next batch, which did not start, is a full-session run of several
        threads with no lanes to run on instead, waiting for every thread to free (not
        for its fill wait): the threads keep its turn (see `threads`)."""
        return (
            self._wide
            and self._lanes == 0
            and bool(self._queue)
            and self._waiting is None
            and not self._threads.held_by(self)
        )

    def _wait_to_fill(self) -> bool:
        """Whether an idle batcher holds its queue back to let more requests join (once,
        `batch_wait_s`, unless the next batch is full already)."""
        full = len(self._queue) >= self.max_batch_size or self._queued_texts >= self.max_batch_texts
        if self.batch_wait_s <= 0 or self._waited or full:
            if self._waiting is not None:
                self._waiting.cancel()
                self._waiting = None
            return False
        if self._waiting is None:
            self._waiting = asyncio.get_running_loop().call_later(self.batch_wait_s, self._end_wait)
        return True

    def _end_wait(self) -> None:
        self._waiting = None
        self._waited = True
        self._dispatch()

    def _drop_gone(self) -> None:
        """Take out requests nobody waits for any more, before they cost a run: those
        whose deadline passed (`expired`, whether or not the caller's own timeout at
        that deadline cancelled them already, as `InlineBackend`'s does) and those whose
        caller went away before it (`cancelled`)."""
        now = time.monotonic()
        kept = []
        for item in self._queue:
            if item.deadline is not None and now >= item.deadline:
                self._metrics.dropped("expired")
                if not item.future.done():
                    item.future.set_exception(Timeout("the deadline passed before the model ran"))
            elif item.future.done():  # cancelled: the caller went away
                self._metrics.dropped("cancelled")
            else:
                kept.append(item)
                continue
            self._queued_texts -= len(item.texts)
        self._queue = kept

    def _batch_texts(self, size: int) -> list[int]:
        """The texts in each batch the queue's head could make, of 1, 2, ... requests up
        to `size` (and `max_batch_size`), within `max_batch_texts` (the first request
        always goes, whatever its size)."""
        out: list[int] = []
        texts = 0
        for item in self._queue[: min(size, self.max_batch_size)]:
            if out and texts + len(item.texts) > self.max_batch_texts:
                break
            texts += len(item.texts)
            out.append(texts)
        return out

    def _start(self, size: int, solo: bool) -> None:
        sizes = self._batch_texts(size)
        batch, texts = self._queue[: len(sizes)], sizes[-1]
        del self._queue[: len(batch)]
        self._queued_texts -= texts
        self._waited = False
        self._threads.hold(id(batch), self, texts, busy=not solo, wide=solo and self._wide)
        asyncio.get_running_loop().create_task(self._run_batch(batch, busy=not solo))

    async def _run_batch(self, batch: list[_Pending], busy: bool) -> None:
        loop = asyncio.get_running_loop()
        parts = [(item.texts, item.ids) for item in batch]
        token = self._watcher.run_started() if self._watcher else 0
        ok = False
        try:
            vectors, tokens, seconds = await loop.run_in_executor(
                self._threads.executor, self._run, parts, busy
            )
        except Exception as e:  # every waiter learns, none hangs
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
        else:
            ok = True
            self._metrics.observe_batch(len(tokens), seconds)
            (self.lane_cost if busy else self.cost).observe(len(tokens), seconds)
            results = split_batch([len(item.texts) for item in batch], vectors, tokens)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
        finally:
            if self._watcher:
                self._watcher.run_finished(token, ok)
            self._threads.release(id(batch))

    def _run(
        self, parts: list[tuple[list[str], list[list[int]] | None]], busy: bool
    ) -> tuple[Float32Array, list[int], float]:
        """One batch in an inference thread: tokenize what is not yet, then embed; with
        the seconds it ran. Timed here, not from the loop: a batch waiting for a thread
        another version's batch holds would count that wait as its own cost, and one
        version's burst would make the other refuse requests."""
        started = time.perf_counter()
        self.wedge.block_if_engaged()
        ids = [
            row
            for texts, tokenized in parts
            for row in (tokenized if tokenized is not None else self.runtime.tokenize(texts))
        ]
        vectors, tokens = self.runtime.embed_token_ids(ids, busy=busy)
        return vectors, tokens, time.perf_counter() - started
