"""Traces from a running instance: a caller's sampled `traceparent` is continued by the
Ingress replica, whose spans (the request's, and its steps') reach the collector over
OTLP/HTTP; a request without one is not traced (the share is 0 here)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.integration.conftest import Service
from tests.otlp_collector import Collector, attributes

pytestmark = pytest.mark.integration

TRACE_ID = os.urandom(16).hex()
CALLER = f"00-{TRACE_ID}-{os.urandom(8).hex()}-01"


def _spans(collector: Collector, trace_id: str, names: set[str], timeout_s: float = 20) -> Any:
    """The trace's spans once those named have arrived (they leave in batches)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = collector.by_trace(trace_id)
        if names <= {s.name for s in spans}:
            return spans
        time.sleep(0.5)
    pytest.fail(f"spans of {trace_id}: {[s.name for s in collector.by_trace(trace_id)]}")


def test_a_callers_trace_goes_on_through_the_replica(
    service: Service, otlp_collector: Collector
) -> None:
    with service.client() as client:
        r = client.post(
            "/v1/embeddings",
            json={"model": "minilm", "input": [f"traced {TRACE_ID}", f"also {TRACE_ID}"]},
            headers={"traceparent": CALLER},
        )
        assert r.status_code == 200, r.text
        untraced = client.post("/v1/embeddings", json={"model": "minilm", "input": "not traced"})
        assert untraced.status_code == 200
    spans = {s.name: s for s in _spans(otlp_collector, TRACE_ID, {"/v1/embeddings", "model"})}
    request = spans["/v1/embeddings"]
    assert request.parent_span_id.hex() == CALLER.split("-")[2]
    got = attributes(request)
    assert got["http.response.status_code"] == 200
    assert got["servekit.model"] == "minilm"
    assert got["servekit.version"] == r.headers["X-Model-Version"]
    assert got["servekit.inputs"] == 2
    assert spans["model"].parent_span_id == request.span_id
    assert "admission" in spans
    # Nothing else was traced: the other request sent no traceparent.
    time.sleep(1)
    with otlp_collector.lock:
        traces = {s.trace_id.hex() for _, s in otlp_collector.spans}
    assert traces == {TRACE_ID}
