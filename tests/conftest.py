"""Shared test setup: quiet, offline environment and the example artifact store."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import random
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.pg_server import PgServer
    from tests.redis_server import RedisServer

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test configs use test-only fault injection; production processes never set this.
os.environ.setdefault("SERVEKIT_ALLOW_FAULT_INJECTION", "1")
# Auth is on in every service the tests start: per-session secrets and an embedded
# registry in a temporary folder, inherited by every Ray process the tests start.
_AUTH_DIR = tempfile.mkdtemp(prefix="servekit-test-auth-")
atexit.register(shutil.rmtree, _AUTH_DIR, True)
TEST_SECRETS = {
    "SERVEKIT_HMAC_SECRET": "test-hmac-" + secrets.token_urlsafe(24),
    "SERVEKIT_ADMIN_TOKEN": "test-admin-" + secrets.token_urlsafe(24),
    "SERVEKIT_REGISTRY_DSN": f"sqlite:///{_AUTH_DIR}/registry.db",
}
for _name, _value in TEST_SECRETS.items():
    os.environ[_name] = _value
for _name in (
    "SERVEKIT_SECRETS_DIR",
    "SERVEKIT_AWS_SECRET_ID",
    "SERVEKIT_REDIS_URL",
    "SERVEKIT_CACHE_REDIS_URL",
    "SERVEKIT_FEATURES_REDIS_URL",
):
    os.environ.pop(_name, None)

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO_ROOT / "artifacts"

# Figures tests measure (parity minima, counts) are printed at the end of the run.
REPORT: list[str] = []


# Ports handed to servers the tests start: below the kernel's ephemeral range (32768 and
# up), where an outgoing connection or a process binding port 0 (Ray starts dozens) can
# take a port between the pick and the server's bind, and clear of Ray's worker ports
# (10002-19999) and Serve's replica ports (30000-31000).
_PORTS = range(20000, 30000)
_HANDED_OUT: set[int] = set()
_PICK = random.Random()


def free_port() -> int:
    """A TCP port nobody listens on right now, and not handed out before in this run."""
    while True:
        port = _PICK.choice(_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


@pytest.fixture(scope="session")
def example_store() -> Path:
    """The local artifact store with the example versions built (idempotent)."""
    from models.build import build

    build(ARTIFACTS_DIR)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def manifest(example_store: Path) -> dict[str, dict[str, str]]:
    """Version name -> manifest entry of the example model."""
    import json

    data = json.loads((example_store / "manifest.json").read_text())
    versions: dict[str, dict[str, str]] = data["models"]["minilm"]["versions"]
    return versions


@pytest.fixture
def report() -> list[str]:
    """Lines appended here are printed in the test summary."""
    return REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures that tests measured."""
    if REPORT:
        terminalreporter.section("servekit measurements")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL 15 server for the whole run (started on first use, ~1 s)."""
    from tests.pg_server import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """SQLAlchemy URL of a fresh, empty database on the session's PostgreSQL server
    (one per test: ~30 ms). Longer-lived users call `pg_server.create_database()`."""
    return pg_server.create_database()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on 127.0.0.1 for the session (no password, no persistence)."""
    from tests.redis_server import start_redis

    server = start_redis()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_with_password() -> Iterator[RedisServer]:
    """A second redis-server that requires a password (`.url` has none; `.password`)."""
    from tests.redis_server import start_redis

    server = start_redis(password="test-only-" + os.urandom(8).hex())
    try:
        yield server
    finally:
        server.stop()


TEST_TENANT = "test-tenant"


@functools.cache
def tenant_api_key() -> str:
    """A key of the test tenant with every scope and the right to pin versions, made
    once per session in the tests' registry (every service the tests start uses it)."""
    from datetime import UTC, datetime

    from stores.registry_sql import open_registry
    from stores.tenants import SCOPES, RateLimits, issue_key

    registry = open_registry(TEST_SECRETS["SERVEKIT_REGISTRY_DSN"])
    try:
        if registry.get_tenant(TEST_TENANT) is None:
            registry.create_tenant("Tests", RateLimits(), TEST_TENANT)
        key, _ = issue_key(
            registry,
            TEST_SECRETS["SERVEKIT_HMAC_SECRET"].encode(),
            TEST_TENANT,
            name="tests",
            scopes=frozenset(SCOPES),
            may_pin=True,
            now=datetime.now(UTC),
        )
    finally:
        registry.close()
    return key


@pytest.fixture(scope="session", autouse=True)
def _tenant_key_exists() -> None:
    """The test tenant's key exists before any service starts, so every replica knows it
    from its first request (a key made later is known within `auth.refresh_s`)."""
    tenant_api_key()


def auth_headers() -> dict[str, str]:
    """`Authorization` with the test tenant's key."""
    return {"Authorization": f"Bearer {tenant_api_key()}"}


def operator_headers() -> dict[str, str]:
    """`Authorization` with the tests' operator credential."""
    return {"Authorization": f"Bearer {TEST_SECRETS['SERVEKIT_ADMIN_TOKEN']}"}


@contextlib.contextmanager
def moto_server(what: str) -> Iterator[str]:
    """moto's standalone server on 127.0.0.1 (a real AWS-compatible endpoint, not a
    patched boto3); its URL. `what` names it in the failure when it does not start."""
    import subprocess
    import sys
    import time

    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the {what} test server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def make_feature_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """A factory of online feature stores of one backend, all on the same data: the
    embedded SQLite store (a file in tmp_path), then Redis (the session's server)."""
    import uuid

    from stores.features_redis import RedisFeatureStore
    from stores.features_sqlite import SqliteFeatureStore

    if request.param == "sqlite":
        return lambda: SqliteFeatureStore(tmp_path / "features.db")
    url: str = request.getfixturevalue("redis_url")
    prefix = f"t{uuid.uuid4().hex[:10]}:fs:"  # the server is shared by the session
    return lambda: RedisFeatureStore(url, prefix=prefix, timeout_s=1.0)
