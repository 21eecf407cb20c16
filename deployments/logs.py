"""JSON log lines: one per request, with request id, model, version, status, latency.

Never payloads: no texts, no vectors, no headers beyond the request id.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

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


def get_logger(name: str = "") -> logging.Logger:
    """servekit's logger (or a child), writing JSON lines to stderr, set up once."""
    root = logging.getLogger(_LOGGER_NAME)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
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
) -> None:
    """The access line of one request."""
    logger.info(
        "request",
        extra={
            "fields": {
                "request_id": request_id,
                "route": route,
                "model": model,
                "version": version,
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                "inputs": inputs,
            }
        },
    )
