"""Access lines are batched off the request path; warnings are not held back."""

from __future__ import annotations

import io
import logging
import multiprocessing
import time
from pathlib import Path
from typing import Any

import orjson

from deployments.observability.logs import (
    LOG_FILE_ENV,
    LOG_FILE_KEEP_ENV,
    LOG_FILE_MAX_MB_ENV,
    LOG_FORMAT_ENV,
    REPEAT_WINDOW_S,
    BatchedLineHandler,
    JsonFormatter,
    RepeatLimit,
    RotatingFile,
    handlers_from_env,
    log_request,
)
from tests.unit.deployments.fakes import RecordedLogs


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


def _local(console: io.StringIO, path: Path, clock: Any = time.monotonic) -> logging.Logger:
    """A logger set up as in a `servekit serve` instance's processes."""
    logger = logging.getLogger(f"test-local-{id(console)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for handler in handlers_from_env({LOG_FILE_ENV: str(path), LOG_FORMAT_ENV: "text"}, console):
        for limit in [f for f in handler.filters if isinstance(f, RepeatLimit)]:
            limit._clock = clock
        logger.addHandler(handler)
    return logger


def _flush(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.flush()


def test_a_local_console_gets_events_and_failed_requests_the_file_every_line(
    tmp_path: Path,
) -> None:
    """What `servekit serve` asks for: every line in a JSON file; events (and the
    requests a caller saw fail) on the console, one readable line each."""
    console, path = io.StringIO(), tmp_path / "servekit.log"
    logger = _local(console, path)
    log_request(logger, "ok", "/v1/embeddings", "m", "v1", 200, time.perf_counter(), 1)
    log_request(logger, "failed", "/v1/embeddings", "m", "v2", 500, time.perf_counter(), 1)
    logger.warning("canary rolled back", extra={"fields": {"model": "m", "version": "v2"}})
    try:
        raise ValueError("bad input\nsecond line")
    except ValueError as e:
        logger.error("model call failed", exc_info=e, extra={"fields": {"target": "m/v2"}})
    _flush(logger)
    events = console.getvalue().splitlines()
    assert len(events) == 3
    assert events[0].startswith("info test-local-")
    assert 'request_id="failed"' in events[0]
    assert events[1].endswith(': canary rolled back model="m" version="v2"')
    assert events[2].endswith(': model call failed target="m/v2" error="ValueError: bad input"')
    written = [orjson.loads(line) for line in path.read_text().splitlines()]
    assert [line.get("request_id", line["msg"]) for line in written] == [
        "ok", "failed", "canary rolled back", "model call failed",
    ]  # fmt: skip
    assert "Traceback" in written[-1]["exc"]


def test_a_text_console_shows_a_few_lines_of_a_kind_then_counts_the_rest(
    tmp_path: Path,
) -> None:
    now = [0.0]
    console = io.StringIO()
    logger = _local(console, tmp_path / "servekit.log", clock=lambda: now[0])
    for i in range(10):
        logger.error("model call failed", extra={"fields": {"n": i}})
    now[0] = REPEAT_WINDOW_S + 1
    logger.error("model call failed", extra={"fields": {"n": 10}})
    _flush(logger)
    shown = console.getvalue().splitlines()
    assert [line.split(" n=")[1] for line in shown] == ["0", "1", "2", "10 not_shown_before=7"]
    assert len((tmp_path / "servekit.log").read_text().splitlines()) == 11


def test_by_default_every_line_is_json_on_stderr() -> None:
    console = io.StringIO()
    [handler] = handlers_from_env({}, stderr=console)
    assert isinstance(handler.formatter, JsonFormatter)


def _lines(path: Path) -> list[str]:
    """Every line of the log and its rotated files, oldest file first."""
    files = sorted(path.parent.glob(f"{path.name}.*[0-9]"), key=lambda f: -int(f.suffix[1:]))
    return [line for f in [*files, path] if f.exists() for line in f.read_text().splitlines()]


def test_the_log_file_is_rotated_by_size_and_keeps_the_newest(tmp_path: Path) -> None:
    """An instance left running must not fill its disk: at the size the file becomes
    `.1` (and `.1` `.2`, ...), at most `keep` rotated files stay, no line is lost
    from those kept, and each file stays near the size (one batch over at most)."""
    path = tmp_path / "servekit.log"
    log = RotatingFile(str(path), max_bytes=1000, keep=2)
    for batch in range(40):
        log.write("".join(f"line {batch}.{i} {'x' * 20}\n" for i in range(3)))
        log.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "servekit.log", "servekit.log.1", "servekit.log.2", "servekit.log.lock",
    ]  # fmt: skip
    for f in (path, path.with_name("servekit.log.1"), path.with_name("servekit.log.2")):
        assert f.stat().st_size < 1000 + 100
    kept = _lines(path)
    written = [f"line {b}.{i} {'x' * 20}" for b in range(40) for i in range(3)]
    assert kept == written[-len(kept) :]
    assert len(kept) > 60


def _write_lines(path: str, who: int, batches: int) -> None:
    log = RotatingFile(path, max_bytes=2000, keep=1000)
    for batch in range(batches):
        log.write("".join(f"{who} {batch} {i}\n" for i in range(5)))
        log.flush()
    log.close()


def test_processes_sharing_the_log_rotate_it_once_and_lose_no_line(tmp_path: Path) -> None:
    """Every process of an instance appends to the one file: whichever finds it full
    rotates it, the others follow to the new file, and every line is in exactly one
    file, in its writer's order."""
    path = tmp_path / "servekit.log"
    spawn = multiprocessing.get_context("spawn")
    writers = [spawn.Process(target=_write_lines, args=(str(path), w, 150)) for w in range(3)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    lines = _lines(path)
    assert len(lines) == 3 * 150 * 5 == len(set(lines))
    for w in range(3):
        mine = [tuple(map(int, line.split()[1:])) for line in lines if line.startswith(f"{w} ")]
        assert mine == sorted(mine)
    assert len(list(tmp_path.glob("servekit.log.*[0-9]"))) >= 5


def test_an_instance_rotates_as_its_environment_says(tmp_path: Path) -> None:
    path = tmp_path / "servekit.log"
    env = {LOG_FILE_ENV: str(path), LOG_FILE_MAX_MB_ENV: "0.001", LOG_FILE_KEEP_ENV: "1"}
    every = handlers_from_env(env, io.StringIO())[0]
    logger = logging.getLogger(f"test-rotate-{id(every)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(every)
    for i in range(60):
        log_request(logger, f"r{i}", "/v1/embeddings", "m", "v1", 200, time.monotonic(), 1)
        every.flush()
    assert sorted(p.name for p in tmp_path.glob("servekit.log*")) == [
        "servekit.log", "servekit.log.1", "servekit.log.lock",
    ]  # fmt: skip


def _counting_records() -> tuple[list[int], Any]:
    """A record factory that counts the records made; returns the count and the old one."""
    made = [0]
    old = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made[0] += 1
        return old(*args, **kwargs)

    logging.setLogRecordFactory(factory)
    return made, old


def test_an_access_line_written_directly_is_the_line_the_json_formatter_writes() -> None:
    """servekit's handlers get the line without a `LogRecord` (see `log_request`): the
    same JSON, field for field, as the logging module's way through `JsonFormatter`."""
    direct, stream = io.StringIO(), io.StringIO()
    fast = _logger(direct, interval_s=60)
    slow = logging.getLogger(f"test-slow-{id(stream)}")
    slow.propagate = False
    slow.setLevel(logging.INFO)
    plain = logging.StreamHandler(stream)
    plain.setFormatter(JsonFormatter())
    slow.addHandler(plain)
    for logger in (fast, slow):
        log_request(
            logger, "r-1", "/v1/search", "m", "v2", 200, time.perf_counter(), 3, "acme", "t"
        )
    _flush(fast)
    [a], [b] = direct.getvalue().splitlines(), stream.getvalue().splitlines()
    line_a, line_b = orjson.loads(a), orjson.loads(b)
    assert abs(line_a.pop("ts") - line_b.pop("ts")) < 5
    assert line_a.pop("logger") == fast.name
    assert line_b.pop("logger") == slow.name
    line_a.pop("latency_ms"), line_b.pop("latency_ms")
    assert line_a == line_b
    assert list(orjson.loads(a)) == list(orjson.loads(b))  # the same order of keys


def test_a_local_instance_makes_no_record_for_an_answered_request(tmp_path: Path) -> None:
    """The file takes every access line and the text console only failed ones: answered
    requests reach the file without a `LogRecord`; a failed one still reaches both."""
    console, path = io.StringIO(), tmp_path / "servekit.log"
    logger = _local(console, path)
    made, old = _counting_records()
    try:
        for i in range(20):
            log_request(logger, f"ok-{i}", "/v1/embeddings", "m", "v1", 200, time.perf_counter(), 1)
        assert made[0] == 0
        log_request(logger, "failed", "/v1/embeddings", "m", "v1", 503, time.perf_counter(), 1)
        assert made[0] == 1  # for the console's text line
    finally:
        logging.setLogRecordFactory(old)
    _flush(logger)
    written = [orjson.loads(line)["request_id"] for line in path.read_text().splitlines()]
    assert written == [*(f"ok-{i}" for i in range(20)), "failed"]
    [shown] = console.getvalue().splitlines()
    assert 'request_id="failed"' in shown
    assert "status=503" in shown


def test_an_access_line_reaches_any_other_handler_as_a_record() -> None:
    """A handler that is not servekit's (a user's, a test's) gets the access line as the
    logging module gives it, with its fields."""
    stream = io.StringIO()
    logger = _logger(stream, interval_s=60)
    theirs = RecordedLogs()
    logger.addHandler(theirs)
    log_request(logger, "r-2", "/v1/embeddings", "m", "v1", 200, time.perf_counter(), 1)
    [record] = theirs.records
    assert record.access is True  # type: ignore[attr-defined]
    assert record.fields["request_id"] == "r-2"  # type: ignore[attr-defined]
    _flush(logger)
    assert orjson.loads(stream.getvalue())["request_id"] == "r-2"


def test_a_filter_on_the_logger_still_decides_for_access_lines() -> None:
    stream = io.StringIO()
    logger = _logger(stream, interval_s=60)
    logger.addFilter(lambda record: record.fields["status"] >= 500)  # type: ignore[attr-defined]
    log_request(logger, "ok", "/v1/embeddings", "m", "v1", 200, time.perf_counter(), 1)
    log_request(logger, "failed", "/v1/embeddings", "m", "v1", 500, time.perf_counter(), 1)
    _flush(logger)
    assert [orjson.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == [
        "failed"
    ]
