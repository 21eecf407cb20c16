"""The inference threads a replica's versions share, and which batches hold them.

Every inline version of an ingress replica runs its batches on one pool of threads (a
dedicated replica's one version on its own). A batch starts only when a thread is
free: handed to a busy pool it would wait with its requests fixed, while waiting in
its version's queue it keeps gathering. When a thread frees, the version whose oldest
queued request came first starts its next batch, one batch per pick, so two versions
under load take turns and neither waits behind the other's whole queue. The threads'
holders are what a request's expected wait counts: the work of every version ahead of
it, not only its own version's.

A batch on a version's full session of several ONNX threads (a lone request, see
`inline`) takes every thread: while it runs no other batch starts beside it, and it
starts only while no batch of any version runs (a version with busy lanes runs the
request on a lane instead; one without waits, and the threads that free meanwhile
stay free for it when its request came first). A run on several threads beside
others stalls at its barriers whenever one of its threads lost its core: what busy
lanes exist to avoid.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

# How much lower than the event loop the inference threads run (nice steps).
INFERENCE_NICE_STEP = 4


class Member(Protocol):
    """A version's batcher, as the shared threads see it."""

    def batch_seconds(self, texts: int, busy: bool = False) -> float:
        """How long a batch of `texts` texts of this version runs (0 before measured),
        on its full session or (`busy`) on one busy lane."""

    def queued_seconds(self) -> float:
        """How long this version's queued requests take to run."""

    def head_arrival(self) -> float | None:
        """When this version's oldest queued request arrived; None with none queued."""

    def start_next(self) -> bool:
        """Start this version's next batch on a free thread if it may now; whether it did."""

    def waits_for_every_thread(self) -> bool:
        """Whether this version's next batch, which did not start, waits for every
        thread to free (a full-session run it cannot run on a lane instead)."""


class SharedThreads:
    """`workers` inference threads, the batches holding them and the versions waiting."""

    def __init__(self, workers: int, clock: Callable[[], float] = time.perf_counter):
        self.workers = max(1, workers)
        self._clock = clock  # when batches start, and how long they have run
        self.executor = inference_executor(self.workers)
        self._members: list[Member] = []
        # batch -> (version, started, texts, on a busy lane)
        self._held: dict[int, tuple[Member, float, int, bool]] = {}
        # The batch that takes every thread (a full-session run on several), if any.
        self._wide: int | None = None

    def __enter__(self) -> SharedThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the threads once their batches end."""
        self.executor.shutdown(wait=True)

    def join(self, member: Member) -> None:
        """`member` runs its batches on these threads."""
        self._members.append(member)

    def free(self) -> int:
        """Threads no batch holds (none while a batch holds them all)."""
        return 0 if self._wide is not None else self.workers - len(self._held)

    @property
    def wide(self) -> bool:
        """Whether a full-session run on several threads holds them all now."""
        return self._wide is not None

    def idle(self) -> bool:
        """No batch running and none waiting, of any version."""
        return not self._held and all(m.head_arrival() is None for m in self._members)

    def held_by(self, member: Member) -> list[tuple[float, int, bool]]:
        """(started, texts, on a busy lane) of each batch `member` has running."""
        return [(started, n, busy) for m, started, n, busy in self._held.values() if m is member]

    def hold(
        self,
        batch: int,
        member: Member,
        texts: int,
        busy: bool = False,
        started: float | None = None,
        wide: bool = False,
    ) -> None:
        """`member`'s batch `batch` of `texts` texts takes a thread (`busy`: it runs on
        a busy lane, else on the version's full session; `wide`: on a full session of
        several threads, when no other batch runs: it takes them all)."""
        when = self._clock() if started is None else started
        self._held[batch] = (member, when, texts, busy)
        if wide:
            self._wide = batch

    def release(self, batch: int) -> None:
        """`batch` ended: its thread goes to the versions waiting."""
        self._held.pop(batch, None)
        if batch == self._wide:
            self._wide = None
        self.dispatch()

    def remaining_s(self, member: Member | None = None) -> list[float]:
        """What is left of each batch running (of `member`'s only, when given), by its
        version's measured cost of the kind of run it is."""
        now = self._clock()
        return [
            max(0.0, m.batch_seconds(n, busy) - (now - started))
            for m, started, n, busy in self._held.values()
            if member is None or m is member
        ]

    def queued_s(self, besides: Member) -> float:
        """How long the other versions' queued requests take to run."""
        return sum(m.queued_seconds() for m in self._members if m is not besides)

    def dispatch(self) -> None:
        """Give the free threads to the waiting versions, oldest queued request first,
        one batch per pick. A version whose next batch waits for every thread keeps its
        turn: no later request takes a thread that frees before it. Starting a batch
        never calls back here at once: its run, a fill timer and a dropped request's
        waiter all go on the loop later."""
        while self.free() > 0:
            waiting = [
                (t, i) for i, m in enumerate(self._members) if (t := m.head_arrival()) is not None
            ]
            for _, i in sorted(waiting):
                member = self._members[i]
                if member.start_next():
                    break
                if member.waits_for_every_thread():
                    return
            else:
                return


def inference_executor(workers: int) -> ThreadPoolExecutor:
    """Inference threads, each `INFERENCE_NICE_STEP` below the event loop's priority
    (raising one's own nice value needs no privilege)."""
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
