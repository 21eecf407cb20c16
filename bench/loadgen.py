"""A light HTTP/1.1 keep-alive load generator on asyncio streams.

Each connection sends the same POST back to back for a fixed time and records every
latency; nothing else runs in the loop, so the client costs as little CPU as Python
allows on the same cores as the server.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadFigures:
    """What one workload measured."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status, and whether the server asked to close the connection after it."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    close = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name.lower() == "connection" and "close" in value.lower():
            close = True
    if chunked:
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(length)
    return status, close


async def _connection(
    host: str, port: int, payloads: list[bytes], until: float, warm_until: float, out: LoadFigures
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while True:
            now = time.perf_counter()
            if now >= until:
                break
            writer.write(payloads[i % len(payloads)])
            i += 1
            try:
                status, close = await _read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                out.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            done = time.perf_counter()
            if close:  # as any HTTP/1.1 client does: a new connection for the next one
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            if now >= warm_until:
                out.latencies_s.append(done - now)
                if status == 200:
                    out.requests += 1
                else:
                    out.errors += 1
    finally:
        writer.close()


async def run_load(
    url_host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    connections: int,
    warmup_s: float,
    measure_s: float,
) -> LoadFigures:
    """Drive `connections` keep-alive connections; count only after the warm-up."""
    payloads = [_request(url_host, port, path, b) for b in bodies]
    out = LoadFigures()
    start = time.perf_counter()
    warm_until = start + warmup_s
    until = warm_until + measure_s
    await asyncio.gather(
        *(
            _connection(url_host, port, payloads[k:] + payloads[:k], until, warm_until, out)
            for k in range(connections)
        )
    )
    out.seconds = measure_s
    return out
