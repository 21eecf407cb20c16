"""A throwaway PostgreSQL 15 server for the tests: started on 127.0.0.1 at a free port in
a temporary folder, with durability off (fsync) for speed, stopped and removed at the end.
A server whose test run was killed before it could stop it is stopped by the next start.

PostgreSQL refuses to run as root; as root, its programs run as the `postgres` user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
_START_ATTEMPTS = 3  # another process may take the free port before the server binds it
_ROOT_PREFIX = "servekit-pg-"
_OWNER_FILE = "owner.pid"  # the process whose run the server serves


@dataclass
class PgServer:
    """A running server: `create_database()` gives each user a database of its own."""

    port: int
    socket_dir: Path
    _names: Iterator[int]

    def dsn(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of `database` on this server (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def checkpoint(self) -> None:
        """Make every commit so far durable (the server commits asynchronously)."""
        import psycopg

        conninfo = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def create_database(self, prefix: str = "test") -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{next(self._names)}"
        conninfo = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            # A file copy of the empty template is the fastest way with fsync off.
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return self.dsn(name)


def _as_server_user(args: list[str]) -> list[str]:
    """`args` run as the `postgres` user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", SUPERUSER, "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str], cwd: Path) -> None:
    """Run a PostgreSQL program; its output becomes the error when it fails."""
    done = subprocess.run(
        _as_server_user(args), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def _require_binaries() -> None:
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        raise RuntimeError(
            f"PostgreSQL 15 is not installed ({PG_BIN}/initdb is missing): "
            "run scripts/install-servers.sh"
        )


def _start(root: Path, data: Path, port: int) -> None:
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    log = root / "server.log"
    try:
        _run([str(PG_BIN / "pg_ctl"), "start", "-w", "-D", str(data), "-l", str(log),
              "-o", options], root)  # fmt: skip
    except RuntimeError as e:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{e}\nserver log:\n{tail}") from e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process, alive
    return True


def _stop_abandoned() -> None:
    """Stop and remove the servers of test runs that died without doing so (a run killed
    by a timeout skips its teardown); those of live runs are left alone."""
    for owner in Path(tempfile.gettempdir()).glob(f"{_ROOT_PREFIX}*/{_OWNER_FILE}"):
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            continue
        data = owner.parent / "data"
        if (data / "postmaster.pid").exists():
            stop = [str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(data)]
            # Another run may be stopping it at the same moment: its outcome is not ours.
            subprocess.run(_as_server_user(stop), capture_output=True, timeout=60, check=False)
        shutil.rmtree(owner.parent, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PgServer]:
    """A PostgreSQL 15 server on 127.0.0.1, trusted (no password) for `postgres`."""
    from tests.conftest import free_port

    _require_binaries()
    _stop_abandoned()
    root = Path(tempfile.mkdtemp(prefix=_ROOT_PREFIX))
    (root / _OWNER_FILE).write_text(str(os.getpid()))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, SUPERUSER, SUPERUSER)
        shutil.chown(data, SUPERUSER, SUPERUSER)
    try:
        _run([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", SUPERUSER,
              "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], root)  # fmt: skip
        for attempt in range(_START_ATTEMPTS):
            port = free_port()
            try:
                _start(root, data, port)
                break
            except RuntimeError:
                if attempt + 1 == _START_ATTEMPTS:
                    raise
        try:
            yield PgServer(port, root, count(1))
        finally:
            _run([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(data)], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
