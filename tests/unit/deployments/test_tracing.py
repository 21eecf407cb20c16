"""Traces: the caller's `traceparent` continues here, sampled requests and their steps
reach a collector over OTLP/HTTP (a real receiver on 127.0.0.1 decoding the protobuf),
unsampled ones cost no span, and every request has a trace id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deployments.observability.tracing import (
    DEFAULT_SAMPLE_RATIO,
    Parent,
    from_env,
    parse_traceparent,
    sample_ratio,
    step,
)
from tests.otlp_collector import Collector, attributes

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
IDS = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector().start()
    yield server
    server.stop()


def _env(server: Collector, ratio: str) -> dict[str, str]:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    return {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url,
        "OTEL_TRACES_SAMPLER_ARG": ratio,
        "OTEL_SERVICE_NAME": "servekit-test",
    }


def test_a_callers_sampled_trace_continues_here_with_the_steps(
    collector: Collector,
) -> None:
    tracing = from_env(_env(collector, "0"))  # the caller's flag decides, not the share
    trace = tracing.begin("/v1/embeddings", CALLER)
    assert trace.sampled
    assert trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    with step("embed", model="minilm"), step("model run"):
        pass
    trace.end(200, {"servekit.model": "minilm", "servekit.tenant": "acme"})
    assert tracing.flush()
    spans = {s.name: (service, s) for service, s in collector.spans}
    assert set(spans) == {"/v1/embeddings", "embed", "model run"}
    service, request = spans["/v1/embeddings"]
    assert service["service.name"] == "servekit-test"
    assert request.trace_id.hex() == trace.trace_id
    assert request.parent_span_id.hex() == "00f067aa0ba902b7"
    assert attributes(request) == {
        "http.response.status_code": 200,
        "servekit.model": "minilm",
        "servekit.tenant": "acme",
    }
    embed, run = spans["embed"][1], spans["model run"][1]
    assert embed.parent_span_id == request.span_id
    assert run.parent_span_id == embed.span_id
    assert {embed.trace_id.hex(), run.trace_id.hex()} == {trace.trace_id}
    assert attributes(embed) == {"model": "minilm"}


def test_unsampled_requests_export_nothing_and_keep_their_trace_id(
    collector: Collector,
) -> None:
    tracing = from_env(_env(collector, "0"))
    unsampled = CALLER[:-2] + "00"
    trace = tracing.begin("/v1/search", unsampled)
    assert not trace.sampled
    assert trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    with step("search"):
        pass
    trace.end(200, {})
    own = tracing.begin("/v1/search", None)  # share 0: not sampled, an id of its own
    assert not own.sampled
    assert len(own.trace_id) == 32
    assert own.trace_id != trace.trace_id
    own.end(200, {})
    assert tracing.flush()
    assert collector.spans == []


def test_the_share_samples_requests_without_a_callers_trace(
    collector: Collector,
) -> None:
    tracing = from_env(_env(collector, "1"))
    trace = tracing.begin("/v1/recommendations", "not a traceparent")
    assert trace.sampled
    with pytest.raises(RuntimeError), step("recommend"):
        raise RuntimeError("store down")
    trace.end(503, {})
    assert tracing.flush()
    spans = {s.name: s for _, s in collector.spans}
    assert len(spans["/v1/recommendations"].parent_span_id) == 0  # a root: no caller
    assert spans["/v1/recommendations"].status.code == 2  # ERROR: a 5xx
    assert spans["recommend"].status.code == 2
    assert [e.name for e in spans["recommend"].events] == ["exception"]


def test_without_a_collector_requests_get_trace_ids_only() -> None:
    tracing = from_env({})
    assert not tracing.exporting
    assert tracing.sample_ratio == DEFAULT_SAMPLE_RATIO
    trace = tracing.begin("/v1/embeddings", CALLER)
    assert not trace.sampled
    assert trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    with step("embed"):
        pass
    trace.end(500, {})


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (CALLER, Parent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)),
        (CALLER.encode(), Parent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)),
        (CALLER[:-2] + "00", Parent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", False)),
        # A later version may carry more fields: the known ones are read.
        ("cc" + CALLER[2:] + "-what-comes", Parent(*IDS, True)),
        (None, None),
        ("", None),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),  # no trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", None),  # no parent
        ("ff" + CALLER[2:], None),  # version ff is invalid
        (CALLER + "-x", None),  # version 00 has exactly four fields
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),  # 31 hex
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", None),
    ],
)  # fmt: skip
def test_traceparent_is_read_as_w3c_trace_context_says(header: Any, parsed: Parent | None) -> None:
    assert parse_traceparent(header) == parsed


@pytest.mark.parametrize(
    ("raw", "ratio"),
    [
        ("", DEFAULT_SAMPLE_RATIO),
        ("0.25", 0.25),
        ("7", 1.0),
        ("-1", 0.0),
        ("lots", DEFAULT_SAMPLE_RATIO),
    ],
)
def test_the_share_comes_from_the_environment(raw: str, ratio: float) -> None:
    assert sample_ratio({"OTEL_TRACES_SAMPLER_ARG": raw}) == ratio


def test_the_general_endpoint_gets_the_traces_path() -> None:
    from deployments.observability.tracing import traces_endpoint

    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318/"}) == (
        "http://otel:4318/v1/traces"
    )
    assert (
        traces_endpoint(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b/t",
            }
        )
        == "http://b/t"
    )
    assert traces_endpoint({}) is None


def test_the_envelope_traces_each_request_and_logs_its_trace_id(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    """A request's span carries what its access line says; the line carries the
    trace id, the caller's when it sent one."""
    import asyncio
    import logging

    from starlette.responses import Response

    from deployments.dataplane import CallRecord
    from deployments.http.envelope import Envelope
    from tests.unit.deployments.fakes import RequestRecorder

    tracing = from_env(_env(collector, "0"))
    log = logging.getLogger("test-envelope-trace")
    envelope = Envelope(RequestRecorder(), log, tracing=tracing)

    async def work(call: CallRecord) -> Response:
        call.model, call.version, call.inputs = "minilm", "v2", 3
        with step("embed"):
            return Response("ok")

    with caplog.at_level(logging.INFO, logger=log.name):
        asyncio.run(envelope.run("r-1", "/v1/embeddings", False, work, None, CALLER))
        asyncio.run(envelope.run("r-2", "/v1/embeddings", False, work, None, None))
    assert tracing.flush()
    lines = [r.fields for r in caplog.records if getattr(r, "access", False)]
    assert lines[0]["trace_id"] == IDS[0]
    assert len(lines[1]["trace_id"]) == 32
    assert lines[1]["trace_id"] != IDS[0]
    spans = {s.name: s for _, s in collector.spans}
    assert set(spans) == {"/v1/embeddings", "embed"}  # the second was not sampled
    assert attributes(spans["/v1/embeddings"]) == {
        "http.response.status_code": 200,
        "http.route": "/v1/embeddings",
        "servekit.request_id": "r-1",
        "servekit.model": "minilm",
        "servekit.version": "v2",
        "servekit.inputs": 3,
        "servekit.tenant": "-",
    }
    assert spans["embed"].parent_span_id == spans["/v1/embeddings"].span_id


def test_a_sampled_requests_admission_cache_and_model_are_its_steps(
    collector: Collector,
) -> None:
    """Through the real data plane (router, cache, admission): the first search embeds
    (a model step), the second finds its vector in the cache (no model step)."""
    import asyncio

    from tests.unit.deployments.test_dataplane_cache import _call, _live, _plane

    tracing = from_env(_env(collector, "1"))
    plane, _ = _plane()
    asyncio.run(plane.configure(_live()))

    async def request() -> None:
        trace = tracing.begin("/v1/search", None)
        await plane.embed_version(_call("acme"), "minilm", "v1", ["red shoes"], "query")
        trace.end(200, {})

    asyncio.run(request())
    asyncio.run(request())
    assert tracing.flush()
    by_trace: dict[bytes, list[str]] = {}
    for _, span in collector.spans:
        by_trace.setdefault(span.trace_id, []).append(span.name)
    assert sorted(map(sorted, by_trace.values())) == [
        ["/v1/search", "admission", "cache lookup"],
        ["/v1/search", "admission", "cache lookup", "model"],
    ]
