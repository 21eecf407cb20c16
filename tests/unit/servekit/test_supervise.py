"""`servekit serve` keeps the instance its starter process started, without Ray: it
prints the workers' output from their files, adopts what the starter leaves, stops it
all on SIGTERM, and stops what a starter killed halfway left behind. The starter here
is a stand-in process that records an instance (one sleeping process carrying its
token) the way the real one does, then exits or is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit import instance

STARTER = """
import os, signal, subprocess, sys
from pathlib import Path
from servekit import instance

owner = int(os.environ["SERVEKIT_SERVE_OWNER"])
logs = Path(sys.argv[1])
token = instance.new_token()
env = {**os.environ, instance.INSTANCE_ENV: token}
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
instance.record_this(token, 0, Path("c.yaml"), owner).seen(logs_dir=str(logs))
(logs / "worker-ab12-01000000-42.err").write_text(":actor_name:Replica\\nhello\\n")
if sys.argv[2] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "slow":  # still deploying when the stop comes: it stops what it started
    def stop(signum, frame):
        instance.sweep(token, grace_s=0.5)
        instance.Record(owner, instance.start_ticks(owner), token, 0, "").remove()
        print("starter: stopped", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("starter: deploying", flush=True)
    signal.pause()
print("starter: serving", flush=True)
"""

OWNER = """
import sys
from pathlib import Path
from servekit import cli, local

local.precheck = lambda path: {{"applications": []}}
cli.STARTER_COMMAND = [sys.executable, {starter!r}, {logs!r}, {mode!r}]
sys.exit(cli._supervise([], Path("c.yaml"), 1.0))
"""


def _owner(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    starter, logs = tmp_path / "starter.py", tmp_path / "logs"
    starter.write_text(STARTER)
    logs.mkdir()
    code = textwrap.dedent(OWNER).format(starter=str(starter), logs=str(logs), mode=mode)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, logs


@contextlib.contextmanager
def _killed_if_left(proc: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever happens in the block, `servekit serve` and its group end with it."""
    try:
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _unrecorded(proc: subprocess.Popen[str]) -> bool:
    """No instance record is left under `servekit serve`'s pid."""
    return all(r.pid != proc.pid for r in instance.records())


def _instance_of(owner: int) -> list[instance.Proc]:
    record = next((r for r in instance.records() if r.pid == owner), None)
    return [] if record is None else instance.instance_processes(record.token)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    before = {r.pid for r in instance.records()}
    yield
    for record in instance.records():
        if record.pid not in before:
            instance.sweep(record.token, grace_s=0.5)
            record.remove()


def test_the_owner_keeps_prints_and_stops_what_the_starter_left(tmp_path: Path) -> None:
    proc, _ = _owner(tmp_path, "serving")
    with _killed_if_left(proc):
        deadline = time.monotonic() + 30
        procs: list[instance.Proc] = []
        while time.monotonic() < deadline and not procs:
            procs = _instance_of(proc.pid)
            time.sleep(0.1)
        assert len(procs) == 1, procs
        sleeper = procs[0].pid
        # The starter has exited; what it started is the owner's child now.
        while time.monotonic() < deadline and _parent(sleeper) != proc.pid:
            time.sleep(0.1)
        assert _parent(sleeper) == proc.pid
        time.sleep(0.5)  # a poll of the worker files
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    assert "(Replica pid=42) hello" in lines, out
    assert lines[-2] == "servekit: stopping", out
    assert lines[-1].startswith("servekit: stopped in "), out
    assert not instance.is_running(sleeper)
    assert _unrecorded(proc)


def test_a_starter_killed_halfway_leaves_nothing_running(tmp_path: Path) -> None:
    proc, _ = _owner(tmp_path, "killed")
    with _killed_if_left(proc):
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0, out
    assert "servekit: stopping" not in out
    assert _unrecorded(proc)
    leftover = [
        line
        for line in subprocess.run(
            ["ps", "-eo", "sid=,args="], capture_output=True, text=True
        ).stdout.splitlines()
        if line.split() and line.split()[0] == str(proc.pid) and "time.sleep(600)" in line
    ]
    assert leftover == []


def test_a_stop_while_starting_is_passed_to_the_starter(tmp_path: Path) -> None:
    """SIGTERM to `servekit serve` alone (not its group) while the starter deploys: the
    starter is told, stops what it started, and `servekit serve` exits with it."""
    proc, _ = _owner(tmp_path, "slow")
    with _killed_if_left(proc):
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "starter: deploying\n", first
        procs = _instance_of(proc.pid)
        assert len(procs) == 1, procs
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert out.splitlines()[-1] == "starter: stopped", out
    assert "servekit: stopping" not in out
    assert not instance.is_running(procs[0].pid)
    assert _unrecorded(proc)
