"""The paced caller: pauses between requests, times each, counts failures by status."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from bench.paced import embeddings_sender, measure, requests_for
from tests.conftest import free_port


class _Answers(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the instance answers
    seen: ClassVar[list[tuple[str, str, dict[str, object], int]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        port = self.client_address[1]
        _Answers.seen.append((self.path, self.headers["Authorization"], body, port))
        status = 503 if body["input"] == "refuse" else 200
        payload = b'{"data": []}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Answers.seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_each_request_follows_its_pause_and_is_timed_alone() -> None:
    pauses: list[float] = []
    statuses = iter([200, 200, 503, 200, 0])
    paced = measure(lambda: next(statuses), 20.0, 5, sleep=pauses.append)
    assert pauses == [0.02] * 5  # seconds, before every request
    assert len(paced.latencies_s) == 3
    assert paced.requests == 5
    assert paced.errors == 2  # the 503, and the request with no answer
    assert paced.statuses == {"503": 1}
    assert 0 <= paced.percentile_ms(0.5) < 5  # the pause is not part of a latency


def test_back_to_back_sends_without_pausing() -> None:
    pauses: list[float] = []
    measure(lambda: 200, 0.0, 3, sleep=pauses.append)
    assert pauses == []


def test_embeddings_go_on_one_connection_with_the_key(server: str) -> None:
    send = embeddings_sender(server, "sk-test", "red shoes")
    assert [send() for _ in range(3)] == [200, 200, 200]
    assert {seen[:2] for seen in _Answers.seen} == {("/v1/embeddings", "Bearer sk-test")}
    assert _Answers.seen[0][2] == {"model": "minilm", "input": "red shoes"}
    assert len({seen[3] for seen in _Answers.seen}) == 1  # one connection, kept
    assert embeddings_sender(server, "sk-test", "refuse")() == 503


def test_a_pause_gets_a_few_seconds_of_requests_within_bounds() -> None:
    assert requests_for(0) == 400
    assert requests_for(20) == 173
    assert requests_for(1000) == 40


def test_no_server_is_a_failed_request_not_a_crash() -> None:
    free = free_port()  # nothing listens there
    assert embeddings_sender(f"http://127.0.0.1:{free}", "sk-test", "red shoes")() == 0
