"""Access lines are batched off the request path; warnings are not held back."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import orjson

from deployments.observability.logs import (
    ACCESS_LOG_ENV,
    LOG_FORMAT_ENV,
    BatchedLineHandler,
    JsonFormatter,
    handlers_from_env,
    log_request,
)


def _logger(stream: io.StringIO, interval_s: float) -> logging.Logger:
    logger = logging.getLogger(f"test-batched-{id(stream)}")
    logger.propagate = False
    handler = BatchedLineHandler(stream, interval_s=interval_s, max_lines=1000)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def test_access_lines_are_written_together_after_the_interval() -> None:
    stream = io.StringIO()
    logger = _logger(stream, interval_s=0.3)
    for i in range(5):
        log_request(logger, f"req-{i}", "/v1/embeddings", "m", "v1", 200, time.perf_counter(), 1)
    assert stream.getvalue() == ""  # nothing written on the callers' path
    deadline = time.monotonic() + 5
    while stream.getvalue().count("\n") < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == [f"req-{i}" for i in range(5)]
    assert all(line["status"] == 200 and line["route"] == "/v1/embeddings" for line in lines)


def test_a_warning_is_written_at_once_after_what_was_queued() -> None:
    stream = io.StringIO()
    logger = _logger(stream, interval_s=60)
    log_request(logger, "before", "/v1/embeddings", "m", "v1", 200, time.perf_counter(), 1)
    logger.warning("rollback", extra={"fields": {"model": "m"}})
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("request_id", line["msg"]) for line in lines] == ["before", "rollback"]
    assert lines[1]["level"] == "warning"


def test_a_local_console_gets_events_and_failed_requests_the_file_every_request(
    tmp_path: Path,
) -> None:
    """What `servekit serve` asks for: access lines in a file, events (and the requests a
    caller saw fail) on the console as text."""
    console, path = io.StringIO(), tmp_path / "access.log"
    env = {ACCESS_LOG_ENV: str(path), LOG_FORMAT_ENV: "text"}
    logger = logging.getLogger(f"test-local-{id(console)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for handler in handlers_from_env(env, stderr=console):
        logger.addHandler(handler)
    log_request(logger, "ok", "/v1/embeddings", "m", "v1", 200, time.perf_counter(), 1)
    log_request(logger, "failed", "/v1/embeddings", "m", "v2", 500, time.perf_counter(), 1)
    logger.warning("canary rolled back", extra={"fields": {"model": "m", "version": "v2"}})
    for handler in logger.handlers:
        handler.flush()
    events = console.getvalue().splitlines()
    assert events[0].startswith("info test-local-")
    assert 'request_id="failed"' in events[0]
    assert events[1].endswith(': canary rolled back model="m" version="v2"')
    assert len(events) == 2
    written = [orjson.loads(line) for line in path.read_text().splitlines()]
    assert [line["request_id"] for line in written] == ["ok", "failed"]


def test_by_default_every_line_is_json_on_stderr() -> None:
    console = io.StringIO()
    [handler] = handlers_from_env({}, stderr=console)
    assert isinstance(handler.formatter, JsonFormatter)
