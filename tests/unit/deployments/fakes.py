"""Fakes the data plane's unit tests share: a runtime that can be held inside a run, and
a recorder of what a batcher reports."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from models.runtime import RuntimeOptions

DIM = 4
GATE_TIMEOUT_S = 10.0  # a test that forgets to open the gate fails instead of hanging


class FakeRuntime:
    """Stands in for a `TextEmbedder`: token ids are a text's UTF-8 bytes, and a text's
    vector is `[its byte count, 0, 0, 0]`. Every run is recorded with the texts it got.
    While `gate` is cleared, runs block inside the inference thread. Its full session
    has `intra_op_threads` (0: one per core, as ONNX Runtime's default)."""

    ready = True
    device_name = "cpu"

    def __init__(
        self,
        busy_lanes: int = 1,
        run_seconds: Callable[[int, bool], float] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        self.busy_lanes = busy_lanes
        self.options = RuntimeOptions(intra_op_threads=intra_op_threads)
        self.run_seconds = run_seconds  # (texts, busy) -> how long a run takes
        self.busy_runs: list[bool] = []
        self.gate = threading.Event()
        self.gate.set()
        self.runs: list[list[str]] = []
        self._lock = threading.Lock()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode()) for text in texts]

    def embed_token_ids(
        self, ids: list[list[int]], busy: bool = False
    ) -> tuple[npt.NDArray[np.float32], list[int]]:
        with self._lock:
            self.runs.append([bytes(row).decode() for row in ids])
            self.busy_runs.append(busy)
        if self.run_seconds is not None:
            time.sleep(self.run_seconds(len(ids), busy))
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the test never opened the gate")
        vectors = np.zeros((len(ids), DIM), dtype=np.float32)
        vectors[:, 0] = [len(row) for row in ids]
        return vectors, [len(row) for row in ids]

    def ran(self, text: str) -> bool:
        """Whether any run got `text`."""
        return any(text in run for run in self.runs)


class BatchRecorder:
    """A `BatchMetrics` that keeps what it is told."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.drops: list[str] = []

    def observe_batch(self, inputs: int, seconds: float) -> None:
        self.batches.append(inputs)

    def dropped(self, reason: str, requests: int = 1) -> None:
        self.drops.extend([reason] * requests)


class QuietRouterMetrics:
    """A router's metrics that record nothing."""

    def weight(self, *args: object) -> None:
        pass

    def rollback(self, *args: object) -> None:
        pass

    def shadow(self, *args: object, **kwargs: object) -> None:
        pass


class RequestRecorder:
    """The requests and tenant series recorded (an `Envelope`'s metrics)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, int]] = []
        self.tenants: list[tuple[str, int]] = []

    def observe(
        self, model: str, version: str, route: str, code: int, seconds: float, inputs: int
    ) -> None:
        self.requests.append((model, version, route, code))

    def observe_tenant(self, tenant: str, code: int) -> None:
        self.tenants.append((tenant, code))


def events_app(features: Any, monkeypatch: Any) -> Any:
    """A FastAPI app of the events and features routes alone over `features` (a
    `FeatureService`), as a replica hosts them (its envelope and error handlers,
    admission letting everything through)."""
    from types import SimpleNamespace

    from fastapi import FastAPI

    from deployments.dataplane import CallRecord
    from deployments.http import events_routes, hosted
    from deployments.http.api import api
    from deployments.http.envelope import Envelope

    async def admit(call: CallRecord, texts: int, field: str | None = None) -> None:
        return None

    host = SimpleNamespace(
        envelope=Envelope(RequestRecorder(), logging.getLogger("test")),
        plane=SimpleNamespace(admit=admit),
        args=SimpleNamespace(features=SimpleNamespace(max_events_per_request=1000,
                                                      max_future_s=300.0)),
        features=features,
        search=None,
    )  # fmt: skip
    monkeypatch.setattr(hosted, "replica_host", lambda: host)
    monkeypatch.setattr(events_routes, "replica_host", lambda: host)
    app = FastAPI()
    app.exception_handlers.update(api.exception_handlers)
    app.include_router(events_routes.router)
    return app


class RecordedLogs(logging.Handler):
    """A log handler that keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
