"""JSON log lines: one per request, with request id, model, version, status, latency.

Never payloads: no texts, no vectors, no headers beyond the request id.

Where they go: by default every line to stderr, as JSON (what a cluster's log collector
reads). A local `servekit serve` keeps its console for servekit's events: it names a
file in `SERVEKIT_LOG_FILE`, which then takes every line as JSON (each request, each
event with its traceback), and asks with `SERVEKIT_LOG_FORMAT=text` for the console's
lines (events, and the requests a caller saw fail: 5xx) as one readable line each,
a few of a kind at most every 10 s. That file is rotated by size (`RotatingFile`):
every process of the instance appends to it, and it must not fill the disk of an
instance left running.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

import orjson

_LOGGER_NAME = "servekit"
# A file for every line, the console keeping events (set for a local instance).
LOG_FILE_ENV = "SERVEKIT_LOG_FILE"
# "text": console lines as `level logger: message key=value ...`; else JSON.
LOG_FORMAT_ENV = "SERVEKIT_LOG_FORMAT"
# The file's size (MB) at which it is rotated, and how many rotated files are kept
# (`servekit.log.1` the newest): at most (1 + keep) x the size on disk.
LOG_FILE_MAX_MB_ENV = "SERVEKIT_LOG_FILE_MAX_MB"
LOG_FILE_KEEP_ENV = "SERVEKIT_LOG_FILE_KEEP"
DEFAULT_LOG_FILE_MAX_MB = 100.0
DEFAULT_LOG_FILE_KEEP = 3
# On a text console, lines of one kind (logger and message) shown per window.
REPEAT_BURST = 3
REPEAT_WINDOW_S = 10.0


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields passed as `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return json_line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            getattr(record, "fields", {}),
            exc,
        )


def json_line(
    created: float,
    level: str,
    logger: str,
    msg: str,
    fields: Mapping[str, Any],
    exc: str | None = None,
) -> str:
    """One log line as JSON: when, level, logger, message, then the fields (and the
    traceback, if any). `JsonFormatter`'s lines and `log_request`'s direct ones."""
    doc: dict[str, Any] = {"ts": round(created, 3), "level": level, "logger": logger, "msg": msg}
    doc.update(fields)
    if exc is not None:
        doc["exc"] = exc
    return orjson.dumps(doc).decode()


class TextFormatter(logging.Formatter):
    """`warning servekit.router: canary rolled back model=minilm version=v2 ...`:
    an event as a person reads it on a console."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as one line: an exception as its type and message (the
        traceback is in the JSON log), lines held back before it as a count."""
        fields = dict(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields.setdefault("error", f"{type(error).__name__}: {error}".splitlines()[0])
        held = getattr(record, "held_back", 0)
        if held:
            fields["not_shown_before"] = held
        text = " ".join(
            f"{key}={value if isinstance(value, int | float) else orjson.dumps(value).decode()}"
            for key, value in fields.items()
        )
        line = f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        return f"{line} {text}" if text else line


class RepeatLimit(logging.Filter):
    """At most `burst` lines of one kind (logger and message) per `window_s`; the next
    one let through carries how many were held back (`held_back`)."""

    def __init__(
        self,
        burst: int = REPEAT_BURST,
        window_s: float = REPEAT_WINDOW_S,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst, self._window_s, self._clock = burst, window_s, clock
        self._kinds: dict[tuple[str, Any], tuple[float, int, int]] = {}
        self._guard = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the line through unless its kind used up the window."""
        now = self._clock()
        with self._guard:
            started, shown, held = self._kinds.get((record.name, record.msg), (now, 0, 0))
            if now - started >= self._window_s:
                started, shown = now, 0
            if shown >= self._burst:
                self._kinds[(record.name, record.msg)] = (started, shown, held + 1)
                return False
            self._kinds[(record.name, record.msg)] = (started, shown + 1, 0)
        if held:
            record.held_back = held
        return True


def is_access(record: logging.LogRecord) -> bool:
    """Whether a record is a per-request access line (see `log_request`)."""
    return bool(getattr(record, "access", False))


class EventsAndFailures(logging.Filter):
    """Every event, and of the access lines only those of requests a caller saw fail
    (5xx): a local instance's console, beside a file that takes every line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the line through unless it is the access line of an answered request."""
        return not is_access(record) or self.shows_access(
            int(getattr(record, "fields", {}).get("status", 0))
        )

    @staticmethod
    def shows_access(status: int) -> bool:
        """Whether the access line of a request answered with `status` gets through."""
        return status >= 500


class LineSink(Protocol):
    """Where a `BatchedLineHandler` writes: a text stream, or a `RotatingFile`."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class BatchedLineHandler(logging.Handler):
    """Formats on the caller's thread, writes from a background one.

    Access lines are collected and written together every `interval_s` (or once
    `max_lines` wait), so a busy replica pays one write per batch, not per request.
    Warnings and errors are written at once, with everything queued before them.
    """

    def __init__(self, stream: LineSink, interval_s: float = 0.25, max_lines: int = 512) -> None:
        super().__init__()
        self._stream = stream
        self._lines: list[str] = []
        self._guard = threading.Lock()
        self._interval_s = interval_s
        self._max_lines = max_lines
        threading.Thread(target=self._loop, name="log-writer", daemon=True).start()
        atexit.register(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted line; flush at once for warnings and errors."""
        try:
            line = self.format(record)
        except Exception:  # a broken record must not break the request
            self.handleError(record)
            return
        self.add_line(line, urgent=record.levelno >= logging.WARNING)

    def add_line(self, line: str, urgent: bool = False) -> None:
        """Queue a line already formatted (by `emit`, or by `log_request` for an access
        line); flush at once when `urgent` or when `max_lines` wait."""
        with self._guard:
            self._lines.append(line)
            urgent = urgent or len(self._lines) >= self._max_lines
        if urgent:
            self.flush()

    def flush(self) -> None:
        """Write every queued line in one go."""
        with self._guard:
            lines, self._lines = self._lines, []
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # the stream is gone (shutdown)
                pass

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval_s)
            self.flush()


class RotatingFile:
    """A log file that many processes append to, rotated when it reaches `max_bytes`:
    `path` becomes `path.1` (`.1` becomes `.2`, and so on; the oldest beyond `keep` is
    dropped), and a new `path` is started.

    Every process of an instance writes to it, so the rotation is shared: before each
    write (one batch of lines, see `BatchedLineHandler`) a writer checks whether `path`
    is still the file it holds open. When it is not, another process rotated it, and
    this one opens the new `path`. When it is and has reached the size, this one rotates
    it, under an exclusive lock on `path.lock`, after checking again under the lock that
    nobody did so meanwhile. A writer's batch that raced a rotation lands at the end of
    `path.1`: no line is lost, none is written twice."""

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError(f"max_bytes and keep must be >= 1, got {max_bytes}, {keep}")
        self.path = path
        self._max_bytes = max_bytes
        self._keep = keep
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (process-long)

    def write(self, text: str) -> int:
        """Append `text` (after a rotation, if one is due), not yet flushed."""
        self._follow()
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _held_size(self) -> int | None:
        """The size of the file this writer has open, None when `path` is no longer it
        (another writer rotated it, or it was removed)."""
        held = os.fstat(self._file.fileno())
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return None
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            return None
        return held.st_size

    def _follow(self) -> None:
        size = self._held_size()
        if size is None:
            self._reopen()
        elif size >= self._max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            size = self._held_size()
            if size is not None and size >= self._max_bytes:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f"{self.path}.{self._keep}")
                for i in range(self._keep - 1, 0, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                os.replace(self.path, f"{self.path}.1")
            self._reopen()

    def _reopen(self) -> None:
        self._file.close()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (process-long)


def rotating_file(path: str, env: Mapping[str, str]) -> RotatingFile:
    """The log file at `path`, rotated as `env` says (or by the defaults)."""
    max_mb = float(env.get(LOG_FILE_MAX_MB_ENV) or DEFAULT_LOG_FILE_MAX_MB)
    keep = int(env.get(LOG_FILE_KEEP_ENV) or DEFAULT_LOG_FILE_KEEP)
    return RotatingFile(path, max(1, int(max_mb * 1024 * 1024)), keep)


def get_logger(name: str = "") -> logging.Logger:
    """servekit's logger (or a child), set up once: JSON lines to stderr, or, as the
    environment asks (see the module's docstring), access lines to a file and events
    to stderr as text."""
    root = logging.getLogger(_LOGGER_NAME)
    if not root.handlers:
        for handler in handlers_from_env(os.environ):
            root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root.getChild(name) if name else root


def handlers_from_env(
    env: Mapping[str, str], stderr: TextIO | None = None
) -> list[logging.Handler]:
    """The handlers servekit's logger gets in an environment like `env`.

    The process's own stderr (`sys.__stderr__`), not `sys.stderr`: Serve points the
    latter of a replica at its log file when `RAY_SERVE_LOG_TO_STDERR=0`."""
    console = BatchedLineHandler(stderr or sys.__stderr__ or sys.stderr)
    text = env.get(LOG_FORMAT_ENV, "").lower() == "text"
    console.setFormatter(TextFormatter() if text else JsonFormatter())
    path = env.get(LOG_FILE_ENV)
    if not path:
        return [console]
    console.addFilter(EventsAndFailures())
    if text:
        console.addFilter(RepeatLimit())
    every = BatchedLineHandler(rotating_file(path, env))
    every.setFormatter(JsonFormatter())
    return [every, console]


def log_request(
    logger: logging.Logger,
    request_id: str,
    route: str,
    model: str,
    version: str,
    status: int,
    started: float,
    inputs: int,
    tenant: str = "-",
    trace_id: str = "-",
) -> None:
    """The access line of one request (the tenant, never the key; the trace it belongs
    to, the caller's or its own: `deployments/observability/tracing.py`).

    One line a request is the logging module's busiest use, and its record (the caller's
    frame looked up, a `LogRecord` of some twenty attributes, every handler's lock) cost
    about 44 us of the Ingress's event loop a request, in place; so when every handler the
    line reaches is one of servekit's (`BatchedLineHandler`), the line goes to each as
    its JSON formatter would write it, and a handler that keeps access lines off its
    output (`EventsAndFailures`) is skipped. Any other handler (a test's, one a user
    adds) gets the line through the logging module, as before."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": request_id,
        "trace_id": trace_id,
        "tenant": tenant,
        "route": route,
        "model": model,
        "version": version,
        "status": status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "inputs": inputs,
    }
    sinks = _access_sinks(logger)
    if sinks is None:
        logger.info("request", extra={"access": True, "fields": fields})
        return
    line: str | None = None
    record: logging.LogRecord | None = None
    for handler in sinks:
        if any(
            isinstance(f, EventsAndFailures) and not f.shows_access(status) for f in handler.filters
        ):
            continue  # this handler keeps the line off its output
        if type(handler.formatter) is JsonFormatter and not handler.filters:
            if line is None:
                line = json_line(time.time(), "info", logger.name, "request", fields)
            handler.add_line(line)
        else:  # its own format or filters: a record, through the handler's own steps
            if record is None:
                extra = {"access": True, "fields": fields}
                record = logger.makeRecord(
                    logger.name, logging.INFO, "", 0, "request", (), None, extra=extra
                )
            handler.handle(record)


def _access_sinks(logger: logging.Logger) -> list[BatchedLineHandler] | None:
    """The handlers an INFO line of `logger` reaches, as `Logger.callHandlers` finds
    them, when each is a `BatchedLineHandler` at INFO or below; None otherwise (another
    kind of handler, none at all, a disabled logger, a logger with filters of its own)."""
    if logger.disabled or logger.filters:
        return None
    sinks: list[BatchedLineHandler] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if type(handler) is not BatchedLineHandler or handler.level > logging.INFO:
                return None
            sinks.append(handler)
        current = current.parent if current.propagate else None
    return sinks or None
