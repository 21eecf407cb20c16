"""Load generators for the serving benchmark: wrk when installed, else asyncio.

wrk (C, one thread) costs the server's cores almost nothing: measured here, about 1 %
of a core at 550 requests/s. The asyncio client below is the fallback where wrk is
missing; it spends noticeably more CPU on the same cores, which lowers every served
configuration's figures (never the raw ones), so results record which one ran.
Both keep each connection busy back to back for a fixed time, count only after a
warm-up, and count any non-2xx answer or broken connection as an error; the non-2xx
answers are also counted by status (`statuses`), so an error figure says what it was.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRK_SCRIPT = Path(__file__).with_name("wrk_bodies.lua")


@dataclass
class LoadFigures:
    """What one workload measured."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def percentile_ms(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _request(host: str, port: int, path: str, body: bytes, auth: str = "") -> bytes:
    extra = f"Authorization: {auth}\r\n" if auth else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
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
                    out.statuses[str(status)] = out.statuses.get(str(status), 0) + 1
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
    auth: str = "",
) -> LoadFigures:
    """Drive `connections` keep-alive connections; count only after the warm-up."""
    payloads = [_request(url_host, port, path, b, auth) for b in bodies]
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


def wrk_path() -> str | None:
    """wrk's executable, when installed."""
    return shutil.which("wrk")


def _wrk_once(
    wrk: str, url: str, bodies_file: Path, connections: int, seconds: float, auth: str
) -> dict[str, Any]:
    argv = [
        wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
        "-s", str(WRK_SCRIPT), url, "--", str(bodies_file), auth,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("LOADGEN "):
            return dict(json.loads(line.removeprefix("LOADGEN ")))
    raise RuntimeError(f"wrk printed no summary: {out.stdout[-500:]} {out.stderr[-500:]}")


def _run_wrk(
    wrk: str,
    url: str,
    bodies: list[bytes],
    connections: int,
    warmup_s: float,
    measure_s: float,
    auth: str,
) -> dict[str, Any]:
    """One workload with wrk: a warm-up run, then the measured run."""
    with tempfile.TemporaryDirectory() as tmp:
        bodies_file = Path(tmp) / "bodies.jsonl"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        if warmup_s > 0:
            _wrk_once(wrk, url, bodies_file, connections, warmup_s, auth)
        r = _wrk_once(wrk, url, bodies_file, connections, measure_s, auth)
    socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {
        "ok": r["requests"] - r["status"],
        "errors": r["status"] + socket_errors,
        "seconds": r["duration_us"] / 1e6,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "statuses": dict(r.get("statuses") or {}),
    }


def run_workload(
    url_host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    connections: int,
    warmup_s: float,
    measure_s: float,
    auth: str = "",
) -> dict[str, Any]:
    """One workload with the lightest client available: ok and failed requests, the
    failed ones' statuses, measured seconds, p50 and p99 in milliseconds. `auth`: an
    Authorization value."""
    wrk = wrk_path()
    if wrk:
        url = f"http://{url_host}:{port}{path}"
        return _run_wrk(wrk, url, bodies, connections, warmup_s, measure_s, auth)
    figures = asyncio.run(
        run_load(url_host, port, path, bodies, connections, warmup_s, measure_s, auth)
    )
    return {
        "ok": figures.requests,
        "errors": figures.errors,
        "seconds": figures.seconds,
        "p50_ms": figures.percentile_ms(0.50),
        "p99_ms": figures.percentile_ms(0.99),
        "statuses": figures.statuses,
    }
