"""A real OTLP/HTTP trace receiver on 127.0.0.1 for the tests: it decodes each export
request (protobuf, as a collector does) and keeps every span with its resource."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Collector(ThreadingHTTPServer):
    """Receives spans at `url`; `spans` holds (resource attributes, span) pairs."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[dict[str, str], Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"

    def start(self) -> Collector:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def by_trace(self, trace_id: str) -> list[Any]:
        """The spans received of one trace (32 hex)."""
        with self.lock:
            return [s for _, s in self.spans if s.trace_id.hex() == trace_id]


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    self.server.spans.extend((attrs, s) for s in scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def attributes(span: Any) -> dict[str, Any]:
    """A span's attributes as Python values (strings and integers)."""
    out: dict[str, Any] = {}
    for a in span.attributes:
        out[a.key] = a.value.int_value if a.value.HasField("int_value") else a.value.string_value
    return out
