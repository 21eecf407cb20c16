"""Access lines are batched off the request path; warnings are not held back."""

from __future__ import annotations

import io
import logging
import time

import orjson

from deployments.observability.logs import BatchedLineHandler, JsonFormatter, log_request


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
