"""A real redis-server on 127.0.0.1 for the tests: no persistence, a free port, stopped
by its pid. Installed by `scripts/install-servers.sh`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import free_port

START_TIMEOUT_S = 10.0


@dataclass
class RedisServer:
    """One redis-server process; `url` has no password (pass `password` separately)."""

    port: int
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Where it listens, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it (again, on the same port) and wait until it answers PING."""
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is missing: run scripts/install-servers.sh (as root)")
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()
        return self

    def stop(self) -> None:
        """SIGTERM to its pid, then wait for it to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def client(self) -> redis.Redis:
        """A blocking client, for checks and FLUSHDB."""
        # No retries: while the server starts, a refused connection is asked again here.
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    pytest.fail(f"redis-server exited with {self.proc.returncode}: {err}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
        self.stop()
        pytest.fail(f"redis-server did not answer PING on port {self.port}")


def start_redis(password: str | None = None, port: int | None = None) -> RedisServer:
    """A started server on a free port (or `port`)."""
    return RedisServer(port or free_port(), password).start()
