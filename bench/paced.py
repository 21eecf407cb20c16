"""Latency of one caller that pauses between its requests, against a running instance.

    .venv/bin/python bench/paced.py [--gaps 0,5,20,50] [--url http://127.0.0.1:8000] [--text ...]

The serving benchmark keeps its connections busy back to back; a product backend at a
modest rate sends a request, waits for the answer, and sends the next some milliseconds
later. For each pause in `--gaps` (ms), this sends one-text `/v1/embeddings` requests
that way on one persistent connection (after a warm-up) and prints the latency's p50,
p90 and p99 and the requests that failed, by status. The key is `SERVEKIT_API_KEY`, or
the local instance's development key (`make serve` writes it). README, Performance,
"Requests that come apart".
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import LoadFigures

WARMUP = 50
DEFAULT_TEXT = "red running shoes for trail and road"


def requests_for(gap_ms: float, budget_s: float = 4.0, least: int = 40, most: int = 400) -> int:
    """How many requests a pause gets: about `budget_s` of the run, within bounds."""
    return int(min(most, max(least, budget_s * 1000 / (gap_ms + 3))))


def measure(
    send: Callable[[], int], gap_ms: float, count: int, sleep: Callable[[float], None] = time.sleep
) -> LoadFigures:
    """`count` calls of `send` (which answers the HTTP status, 0 for no answer), each
    after a pause of `gap_ms`; the latency is timed around `send` alone. Counted as the
    serving benchmark's load generators count: a failure is an error, and a non-2xx
    answer is also counted by its status."""
    result = LoadFigures()
    for _ in range(count):
        if gap_ms > 0:
            sleep(gap_ms / 1000)
        started = time.perf_counter()
        status = send()
        took = time.perf_counter() - started
        result.requests += 1
        result.seconds += took
        if 200 <= status < 300:
            result.latencies_s.append(took)
            continue
        result.errors += 1
        if status:
            result.statuses[str(status)] = result.statuses.get(str(status), 0) + 1
    return result


def embeddings_sender(url: str, key: str, text: str) -> Callable[[], int]:
    """A `send` for `measure`: one `/v1/embeddings` request of `text` on one kept
    connection, reconnecting if the server closed it."""
    parts = urlsplit(url)
    body = json.dumps({"model": "minilm", "input": text})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "127.0.0.1", parts.port, timeout=30)

    def send() -> int:
        try:
            conn.request("POST", "/v1/embeddings", body, headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):  # refused, reset, timed out
            conn.close()
            return 0  # no answer: counted as failed, under status 0
        return response.status

    return send


def api_key() -> str:
    """`SERVEKIT_API_KEY`, else the local instance's development key."""
    key = os.environ.get("SERVEKIT_API_KEY")
    if key:
        return key
    from servekit.credentials import DEV_KEY_FILE

    if not DEV_KEY_FILE.exists():
        raise SystemExit("no key: set SERVEKIT_API_KEY, or start the instance (make serve)")
    return DEV_KEY_FILE.read_text().strip()


def main() -> int:
    """Measure each pause against the running instance and print a line for each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gaps", default="0,5,20,50", help="pauses between requests, ms")
    parser.add_argument("--url", default=os.environ.get("SERVEKIT_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--text", default=DEFAULT_TEXT)
    args = parser.parse_args()
    send = embeddings_sender(args.url, api_key(), args.text)
    measure(send, 0, WARMUP)
    for gap in (float(g) for g in args.gaps.split(",")):
        paced = measure(send, gap, requests_for(gap))
        failed = f"  failed {paced.errors} {paced.statuses}" if paced.errors else ""
        print(
            f"pause {gap:6.1f} ms  n={len(paced.latencies_s):4d}"
            f"  p50 {paced.percentile_ms(0.5):6.2f}  p90 {paced.percentile_ms(0.9):6.2f}"
            f"  p99 {paced.percentile_ms(0.99):6.2f} ms{failed}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
