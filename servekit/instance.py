"""What a local `servekit serve` instance started, so it can all be stopped, even
after the instance itself was killed; and who holds a port it needs.

Every Ray process of an instance (the head's processes, the workers the raylet
starts, the HAProxy a worker starts) is started with `SERVEKIT_INSTANCE=<token>`
in its environment, a random value no other process has. The instance's processes
are those whose environment carries the token, their descendants, and the
processes recorded by pid and start time while the instance ran (Ray's agents
overwrite their environment with their process title): never a process name.
`servekit serve` records the token, its pid, its port, those processes and the
instance's GCS address in `.servekit/serve-<pid>.json` under the project folder (so
does any other process that starts an instance with `local.start_ray`, such as the
tests); a later start whose record's owner is gone stops whatever of that instance
still runs, and `--address local` is the GCS address of the one live record.

Linux only (it reads `/proc`); no Ray, no HTTP.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from configs.settings import PROJECT_ROOT

INSTANCE_ENV = "SERVEKIT_INSTANCE"
STATE_DIR = PROJECT_ROOT / ".servekit"
# How long stopped processes get to exit on SIGTERM before SIGKILL.
TERM_GRACE_S = 2.0


class InstanceError(RuntimeError):
    """Another instance, or another program, is in the way of a start."""


@dataclass(frozen=True)
class Proc:
    """A live process: its id and command line."""

    pid: int
    command: str

    @property
    def program(self) -> str:
        """The executable's file name (or the title a process gave itself)."""
        head = self.command.split(" ", 1)[0] if self.command else "?"
        return head.rsplit("/", 1)[-1] if head.startswith("/") else self.command[:40]

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command or '?'})"


def new_token() -> str:
    """A fresh instance token."""
    return secrets.token_hex(16)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (state is [0])."""
    raw = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return raw.rsplit(")", 1)[1].split() if ")" in raw else []


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie holds no port or memory)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, it names one
    process, even after the pid is reused."""
    fields = _stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 else None


def command_line(pid: int) -> str:
    """The process's command line, arguments separated by spaces."""
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def instance_processes(token: str, known: Iterable[Sequence[int]] = ()) -> list[Proc]:
    """Running processes of an instance (never this one): those carrying its token,
    the `known` (pid, start ticks) pairs still running, and their descendants."""
    needle = f"\0{INSTANCE_ENV}={token}\0".encode()
    parents: dict[int, int] = {}
    ours: set[int] = set()
    for pid in _pids():
        fields = _stat_fields(pid)
        if pid == os.getpid() or not fields or fields[0] in ("Z", "X"):
            continue
        parents[pid] = int(fields[1])
        if needle in b"\0" + _read(f"/proc/{pid}/environ") + b"\0":
            ours.add(pid)
    ours |= {pid for pid, ticks in known if pid in parents and start_ticks(pid) == ticks}
    grown = True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= children
        grown = bool(children)
    return [Proc(pid, command_line(pid)) for pid in sorted(ours)]


def identities(procs: Iterable[Proc]) -> list[list[int]]:
    """(pid, start ticks) of each process, to find exactly these again later."""
    found = []
    for proc in procs:
        ticks = start_ticks(proc.pid)
        if ticks is not None:
            found.append([proc.pid, ticks])
    return found


def signal_all(procs: Iterable[Proc], signum: int) -> None:
    """Send a signal to each process that still exists."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signum)


def wait_gone(procs: Iterable[Proc], timeout_s: float) -> list[Proc]:
    """Wait until the processes have exited; returns those still running."""
    left = list(procs)
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in left if is_running(p.pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop(procs: list[Proc], grace_s: float = TERM_GRACE_S) -> list[Proc]:
    """SIGTERM, then SIGKILL what is still running after `grace_s`; returns what
    could not be stopped (another user's process)."""
    signal_all(procs, signal.SIGTERM)
    left = wait_gone(procs, grace_s)
    signal_all(left, signal.SIGKILL)
    return wait_gone(left, 2.0)


def sweep(
    token: str, known: Iterable[Sequence[int]] = (), grace_s: float = TERM_GRACE_S
) -> list[Proc]:
    """Stop every process of an instance, including those started while stopping
    the first ones; returns what was stopped."""
    known = list(known)
    stopped: list[Proc] = []
    for _ in range(3):
        procs = instance_processes(token, known)
        if not procs:
            break
        stop(procs, grace_s)
        stopped += procs
    return stopped


@dataclass(frozen=True)
class Record:
    """What `.servekit/serve-<pid>.json` says about one `servekit serve`."""

    pid: int
    start_ticks: int | None
    token: str
    port: int
    config: str
    # (pid, start ticks) of the instance's processes, as last seen.
    processes: list[list[int]] = field(default_factory=list)
    # Where a Ray driver reaches the instance (host:port); empty until Ray is up.
    gcs_address: str = ""
    # The Ray session's log folder (its workers' output); empty until Ray is up.
    logs_dir: str = ""

    @property
    def path(self) -> Path:
        return STATE_DIR / f"serve-{self.pid}.json"

    def owner_running(self) -> bool:
        """The `servekit serve` that wrote this is still running (same pid, same
        start time: a reused pid is someone else)."""
        return is_running(self.pid) and start_ticks(self.pid) == self.start_ticks

    def write(self) -> None:
        STATE_DIR.mkdir(exist_ok=True)
        # Never committed, whatever the project's own ignore rules say.
        (STATE_DIR / ".gitignore").write_text("*\n")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def seen(self, gcs_address: str | None = None, logs_dir: str | None = None) -> Record:
        """This record with the instance's processes as they run now (and its GCS
        address and log folder, when given), written."""
        known = identities(instance_processes(self.token, self.processes))
        record = replace(
            self,
            processes=known,
            gcs_address=gcs_address or self.gcs_address,
            logs_dir=logs_dir or self.logs_dir,
        )
        record.write()
        return record

    def describe(self) -> str:
        """`pid 4242 (serve_config.yaml) at 127.0.0.1:6379`, for messages."""
        what = self.config or command_line(self.pid)[:60] or "?"
        return f"pid {self.pid} ({what})" + (f" at {self.gcs_address}" if self.gcs_address else "")


def records() -> list[Record]:
    """Every instance record in the project folder (unreadable ones are skipped)."""
    found = []
    for path in sorted(STATE_DIR.glob("serve-*.json")):
        try:
            found.append(Record(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return found


def record_this(token: str, port: int, config: Path, owner: int | None = None) -> Record:
    """Record a `servekit serve` instance, before it starts Ray: this process's, or
    that of `owner` (the `servekit serve` that keeps it running once this process has
    started it)."""
    pid = owner or os.getpid()
    record = Record(pid, start_ticks(pid), token, port, str(config))
    record.write()
    return record


def own_record() -> Record | None:
    """This process's record, when it has one."""
    return next((r for r in records() if r.pid == os.getpid() and r.owner_running()), None)


# prctl(2)'s option: orphaned descendants are re-parented to this process, not to init.
_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> bool:
    """Make this process the parent of its descendants whose parent exits (Linux
    `PR_SET_CHILD_SUBREAPER`), so that what it started stays its process tree; False
    where the system does not allow it. They are then reaped by `reap`."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap() -> None:
    """Collect every exited child of this process (adopted ones included)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def record_started(token: str, gcs_address: str) -> Record:
    """Record an instance this process has just started without `servekit serve`
    (which records its own first): its processes and GCS address, under this
    process's pid, with no HTTP port (0). Removed again by `forget`."""
    pid = os.getpid()
    return Record(pid, start_ticks(pid), token, 0, "").seen(gcs_address)


def forget(token: str) -> None:
    """Remove this process's record of instance `token`, if it has one."""
    path = STATE_DIR / f"serve-{os.getpid()}.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("token") == token:
            path.unlink()


LOCAL_HELP = (
    "give --address: the instance's GCS address (host:port, printed by servekit serve "
    "as `ray`) or a Ray dashboard URL"
)


def local_address() -> str:
    """The GCS address of the one local instance of this checkout that is running
    (what `--address local` names). Raises InstanceError when none runs, or several
    do: then `--address` has to say which."""
    live = [r for r in records() if r.owner_running()]
    ready = [r for r in live if r.gcs_address]
    if len(ready) == 1:
        return ready[0].gcs_address
    if ready:
        listed = "; ".join(r.describe() for r in ready)
        raise InstanceError(
            f"--address local: {len(ready)} local instances of this checkout are running "
            f"({listed}); say which with --address host:port"
        )
    if live:
        raise InstanceError(
            f"--address local: the instance of this checkout ({live[0].describe()}) is "
            f"still starting; try again once it serves, or {LOCAL_HELP}"
        )
    raise InstanceError(
        f"--address local: no servekit serve of this checkout is running (none recorded "
        f"in {STATE_DIR}); start one (make serve), or {LOCAL_HELP}"
    )


def clean_up_earlier(port: int) -> list[str]:
    """Stop what earlier instances of this checkout left running when they were
    killed; returns a line per instance cleaned. Raises InstanceError when a live
    instance already serves `port`."""
    lines = []
    for record in records():
        if record.pid == os.getpid():
            continue
        if record.owner_running():
            if record.port == port:
                raise InstanceError(
                    f"servekit serve is already running from this checkout on port {port} "
                    f"(pid {record.pid}, {record.config}); stop it first (Ctrl-C in its "
                    f"terminal, or kill -TERM {record.pid})"
                )
            continue
        stopped = sweep(record.token, record.processes)
        record.remove()
        if stopped:
            listed = ", ".join(f"{p.program} ({p.pid})" for p in stopped)
            lines.append(
                f"stopped {len(stopped)} processes left running by an earlier servekit serve "
                f"(pid {record.pid}) of this checkout: {listed}"
            )
    return lines


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind host:port now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def listeners(port: int) -> list[Proc]:
    """Processes with a TCP socket listening on `port` (any address), as far as
    this user can see them."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in _read(table).decode().splitlines()[1:]:
            cols = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return []
    holders = []
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in inodes:
                holders.append(Proc(pid, command_line(pid)))
                break
    return holders


def free_port(host: str = "0.0.0.0") -> int:
    """A TCP port nothing listens on now, chosen by the system."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Ports every Ray Serve instance binds at a fixed default unless its variable (read
# when Ray's processes start) says otherwise, on every interface: a second local
# instance would share them with the first (HAProxy and Serve's proxies bind with
# SO_REUSEPORT, so neither start fails: connections and scrapes are split between
# the two instances).
SERVE_PORTS: dict[str, tuple[int, str]] = {
    "RAY_SERVE_HAPROXY_STATS_PORT": (8404, "HAProxy's stats page"),
    "RAY_SERVE_HAPROXY_METRICS_PORT": (9101, "HAProxy's metrics"),
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": (8500, "Serve's fallback HTTP proxy"),
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": (9500, "Serve's fallback gRPC proxy"),
}


def claim_serve_ports(ports: dict[str, tuple[int, str]] | None = None) -> list[str]:
    """Settle the ports of `SERVE_PORTS` in this process's environment, before Ray
    starts: a port its variable names must be free (InstanceError naming the variable
    otherwise); a default that is in use (another instance's) is replaced by a free
    port. Returns a line per port moved."""
    lines = []
    for name, (default, what) in (SERVE_PORTS if ports is None else ports).items():
        given = os.environ.get(name)
        if given:
            try:
                port = int(given)
            except ValueError:
                raise InstanceError(f"{name}={given!r}: not a port number") from None
            check_port("0.0.0.0", port, f"{name}, {what}")
            continue
        if port_free("0.0.0.0", default):
            os.environ[name] = str(default)
            continue
        holders = ", ".join(str(p) for p in listeners(default)) or "another user's process"
        os.environ[name] = str(free_port())
        lines.append(
            f"port {default} ({what}) is in use by {holders}: this instance uses "
            f"{os.environ[name]} ({name})"
        )
    return lines


CLOSING_WAIT_S = 5.0  # a port whose holder just stopped may take a moment to free


def check_port(host: str, port: int, what: str) -> None:
    """Raise InstanceError naming the holder when host:port cannot be bound. A port
    nobody visibly holds (its process just stopped) gets a few seconds to free."""
    deadline = time.monotonic() + CLOSING_WAIT_S
    while not port_free(host, port):
        holders = listeners(port)
        if holders or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    else:
        return
    holders = listeners(port)
    who = (
        ", ".join(str(p) for p in holders)
        if holders
        else "a process this user cannot see (another user's, or it is just closing)"
    )
    raise InstanceError(f"port {port} ({what}) is in use by {who}; stop it or choose another port")
