"""JSON log lines: one per request, with request id, model, version, status, latency.

Never payloads: no texts, no vectors, no headers beyond the request id.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from typing import Any, TextIO

import orjson

_LOGGER_NAME = "servekit"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields passed as `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class BatchedLineHandler(logging.Handler):
    """Formats on the caller's thread, writes from a background one.

    Access lines are collected and written together every `interval_s` (or once
    `max_lines` wait), so a busy replica pays one write per batch, not per request.
    Warnings and errors are written at once, with everything queued before them.
    """

    def __init__(self, stream: TextIO, interval_s: float = 0.25, max_lines: int = 512) -> None:
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
        with self._guard:
            self._lines.append(line)
            urgent = record.levelno >= logging.WARNING or len(self._lines) >= self._max_lines
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


def get_logger(name: str = "") -> logging.Logger:
    """servekit's logger (or a child), writing JSON lines to stderr, set up once."""
    root = logging.getLogger(_LOGGER_NAME)
    if not root.handlers:
        handler = BatchedLineHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root.getChild(name) if name else root


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
) -> None:
    """The access line of one request (the tenant, never the key)."""
    logger.info(
        "request",
        extra={
            "fields": {
                "request_id": request_id,
                "tenant": tenant,
                "route": route,
                "model": model,
                "version": version,
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                "inputs": inputs,
            }
        },
    )
