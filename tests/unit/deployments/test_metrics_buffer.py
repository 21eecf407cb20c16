"""Metric points leave the request path through a buffer flushed in the background."""

from __future__ import annotations

import time
from typing import Any

from deployments.observability.metrics import RecordBuffer


class FakeMetric:
    """Stands in for a Ray metric object: remembers every call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("inc", value, tags))

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("observe", value, tags))


def test_counters_are_summed_per_tag_set_and_values_kept_in_order() -> None:
    buffer = RecordBuffer(interval_s=3600)
    counter, histogram = FakeMetric(), FakeMetric()
    ok, failed = {"code": "200"}, {"code": "500"}
    for _ in range(3):
        buffer.inc(counter, 1, ok)
    buffer.inc(counter, 2, failed)
    for value in (0.1, 0.2, 0.3):
        buffer.observe(histogram, value, {"version": "v1"})
    assert counter.calls == []
    assert histogram.calls == []
    buffer.flush()
    assert sorted(counter.calls, key=lambda c: c[2]["code"]) == [
        ("inc", 3, ok),
        ("inc", 2, failed),
    ]
    assert histogram.calls == [("observe", v, {"version": "v1"}) for v in (0.1, 0.2, 0.3)]
    buffer.flush()  # a second flush has nothing left to hand over
    assert len(counter.calls) == 2
    assert len(histogram.calls) == 3


def test_background_thread_flushes_on_its_own() -> None:
    buffer = RecordBuffer(interval_s=0.05)
    counter = FakeMetric()
    buffer.inc(counter, 1, {"code": "200"})
    deadline = time.monotonic() + 5
    while not counter.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counter.calls == [("inc", 1, {"code": "200"})]


def test_pending_points_are_bounded() -> None:
    buffer = RecordBuffer(interval_s=3600, max_pending=10)
    histogram = FakeMetric()
    for i in range(25):
        buffer.observe(histogram, float(i), {})
    assert len(histogram.calls) == 20  # handed over at 10 and at 20 pending
    buffer.flush()
    assert [c[1] for c in histogram.calls] == [float(i) for i in range(25)]


def test_a_failing_metric_does_not_stop_the_flusher() -> None:
    class Broken(FakeMetric):
        def inc(self, value: float, tags: dict[str, str]) -> None:
            raise ValueError("bad tag")

    buffer = RecordBuffer(interval_s=0.05)
    good: Any = FakeMetric()
    buffer.inc(Broken(), 1, {})
    time.sleep(0.2)
    buffer.inc(good, 1, {})
    deadline = time.monotonic() + 5
    while not good.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert good.calls == [("inc", 1, {})]
