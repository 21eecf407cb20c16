"""Traces: a span for every sampled request and for its steps, exported over OTLP.

Configured as OpenTelemetry is everywhere, by the environment of the replicas:
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) names the
collector (OTLP over HTTP, protobuf); without one nothing is exported or recorded.
`OTEL_TRACES_SAMPLER_ARG` is the share of requests sampled when the caller sends no
`traceparent` (default `DEFAULT_SAMPLE_RATIO`); a caller's `traceparent` decides for its
own requests (its sampled flag), so a trace that starts in a product backend continues
here whatever the share. `OTEL_SERVICE_NAME` names the service (default `servekit`).

Every request gets a trace id either way, the caller's or a new one, written in its
access line (`trace_id`), so a log line and a trace (or the caller's own trace) meet.

The request path pays for what it samples only: an unsampled request costs the parse
of its `traceparent` (or 16 random bytes) and a context variable, about a microsecond;
the OpenTelemetry SDK is called only for sampled requests, and its spans leave the
replica from a background thread in batches (`BatchSpanProcessor`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger("servekit.tracing")

DEFAULT_SAMPLE_RATIO = 0.01
SAMPLE_RATIO_ENV = "OTEL_TRACES_SAMPLER_ARG"
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"

# W3C Trace Context: version 00, a 32-hex trace id and a 16-hex parent id (neither all
# zeros), two hex of flags (bit 0: sampled). A later version may add fields after them.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(frozen=True)
class Parent:
    """What a caller's `traceparent` says."""

    trace_id: str
    span_id: str
    sampled: bool


def parse_traceparent(value: str | bytes | None) -> Parent | None:
    """The caller's trace, or None when the header is absent or not valid (then the
    request starts a trace of its own, as the W3C recommendation says)."""
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & 1))


# The tracer and OpenTelemetry context of the sampled request being served (None: not
# sampled), so that `step` works anywhere on the request's path without plumbing.
_CURRENT: ContextVar[tuple[Any, Any] | None] = ContextVar("servekit_trace", default=None)


class RequestTrace:
    """One request's part of a trace: its trace id, and its span when sampled."""

    __slots__ = ("_span", "_token", "trace_id")

    def __init__(self, trace_id: str, span: Any = None, tracer: Any = None) -> None:
        self.trace_id = trace_id
        self._span = span
        self._token: Any = None
        if span is not None:
            from opentelemetry import trace

            self._token = _CURRENT.set((tracer, trace.set_span_in_context(span)))

    @property
    def sampled(self) -> bool:
        return self._span is not None

    def end(self, status: int, attributes: Mapping[str, str | int]) -> None:
        """Close the request's span with its outcome (a 5xx marks it an error)."""
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span = self._span
        span.set_attribute("http.response.status_code", status)
        for key, value in attributes.items():
            span.set_attribute(key, value)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        with contextlib.suppress(ValueError):  # reset from another context: harmless
            _CURRENT.reset(self._token)


class Tracing:
    """Starts request traces; `tracer` is an OpenTelemetry tracer, or None when no
    collector is configured (trace ids only)."""

    def __init__(self, tracer: Any, sample_ratio: float, provider: Any = None) -> None:
        self._tracer = tracer
        self._provider = provider
        self.sample_ratio = sample_ratio

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export every ended span now (the batches otherwise leave every few seconds)."""
        if self._provider is None:
            return True
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    @property
    def exporting(self) -> bool:
        return self._tracer is not None

    def begin(self, name: str, traceparent: str | bytes | None) -> RequestTrace:
        """The trace of a request that starts now, named by its route."""
        parent = parse_traceparent(traceparent)
        sampled = parent.sampled if parent is not None else random.random() < self.sample_ratio
        if not sampled or self._tracer is None:
            trace_id = parent.trace_id if parent is not None else os.urandom(16).hex()
            return RequestTrace(trace_id)
        from opentelemetry import trace

        context = None
        if parent is not None:
            remote = trace.SpanContext(
                int(parent.trace_id, 16),
                int(parent.span_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        span = self._tracer.start_span(name, context=context, kind=trace.SpanKind.SERVER)
        return RequestTrace(format(span.get_span_context().trace_id, "032x"), span, self._tracer)


_UNTRACED = contextlib.nullcontext()


def step(name: str, **attributes: str | int) -> contextlib.AbstractContextManager[None]:
    """A child span of the sampled request being served around a step of its work (a
    context variable lookup, nothing more, for an unsampled one or outside a request)."""
    current = _CURRENT.get()
    if current is None:
        return _UNTRACED
    return _span(current, name, attributes)


@contextlib.contextmanager
def _span(current: tuple[Any, Any], name: str, attributes: dict[str, str | int]) -> Iterator[None]:
    from opentelemetry import trace

    tracer, context = current
    span = tracer.start_span(name, context=context, attributes=attributes)
    token = _CURRENT.set((tracer, trace.set_span_in_context(span, context)))
    try:
        yield
    except BaseException as e:
        span.record_exception(e)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(e).__name__))
        raise
    finally:
        span.end()
        _CURRENT.reset(token)


# Trace ids only: what a process without a collector (and the tests) uses.
NO_EXPORT = Tracing(None, 0.0)


def sample_ratio(env: Mapping[str, str]) -> float:
    """The share of requests without a caller's trace that are sampled."""
    raw = env.get(SAMPLE_RATIO_ENV, "").strip()
    if not raw:
        return DEFAULT_SAMPLE_RATIO
    try:
        ratio = float(raw)
    except ValueError:
        LOG.warning("%s is not a number; sampling %s", SAMPLE_RATIO_ENV, DEFAULT_SAMPLE_RATIO)
        return DEFAULT_SAMPLE_RATIO
    return min(1.0, max(0.0, ratio))


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where spans go: the traces endpoint as given, or `/v1/traces` under the general
    one (OpenTelemetry's rule for OTLP over HTTP)."""
    if env.get(ENDPOINT_ENVS[0]):
        return env[ENDPOINT_ENVS[0]]
    if env.get(ENDPOINT_ENVS[1]):
        return env[ENDPOINT_ENVS[1]].rstrip("/") + "/v1/traces"
    return None


def from_env(env: Mapping[str, str] | None = None, exporter: Any = None) -> Tracing:
    """Tracing as the replica's environment configures it (see the module's docstring);
    `exporter` replaces the OTLP one (tests)."""
    env = os.environ if env is None else env
    if exporter is None and not any(env.get(name) for name in ENDPOINT_ENVS):
        return Tracing(None, sample_ratio(env))
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Its headers, timeout and compression it reads from the process's environment.
        exporter = OTLPSpanExporter(endpoint=traces_endpoint(env))
    service = env.get(SERVICE_NAME_ENV) or "servekit"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider.get_tracer("servekit"), sample_ratio(env), provider)
