"""An instance's processes are found by its token and record, never by name; a
port's holder is named; leftovers of a killed instance are stopped, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit import instance
from tests.conftest import free_port

# Listens on the port given (if any), starts a child that does not carry the
# token (as Ray's agents do not), prints its pid, then waits.
LISTENER = """
import os, socket, subprocess, sys, time
if len(sys.argv) > 1:
    sock = socket.socket()
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    sock.listen()
env = {k: v for k, v in os.environ.items() if k != "SERVEKIT_INSTANCE"}
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(instance, "STATE_DIR", tmp_path / ".servekit")
    return tmp_path / ".servekit"


def _start(
    spawned: list[subprocess.Popen[str]], port: int | None = None, token: str | None = None
) -> tuple[subprocess.Popen[str], int]:
    """A process (listening on `port`, carrying `token`) and its child's pid."""
    env = {k: v for k, v in os.environ.items() if k != instance.INSTANCE_ENV}
    if token:
        env[instance.INSTANCE_ENV] = token
    args = [sys.executable, "-c", LISTENER, *([str(port)] if port else [])]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    spawned.append(proc)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _dead_pid() -> int:
    code = "import os; print(os.getpid())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True).stdout)


def test_a_foreign_port_holder_is_named(spawned: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    holder, _ = _start(spawned, port)
    assert not instance.port_free("127.0.0.1", port)
    with pytest.raises(instance.InstanceError) as caught:
        instance.check_port("127.0.0.1", port, "http_options.port of serve_config.yaml")
    message = str(caught.value)
    assert message.startswith(
        f"port {port} (http_options.port of serve_config.yaml) is in use by pid {holder.pid} ("
    )
    assert sys.executable in message
    holder.kill()
    holder.wait()
    instance.check_port("127.0.0.1", port, "http_options.port")


def test_leftovers_of_a_killed_instance_are_stopped_and_nothing_else(
    spawned: list[subprocess.Popen[str]], state_dir: Path
) -> None:
    port, token = free_port(), instance.new_token()
    proxy, proxy_child = _start(spawned, port, token)  # holds the port, like HAProxy
    agent, agent_child = _start(spawned)  # no token, recorded by pid and start time
    bystander, bystander_child = _start(spawned)  # not the instance's
    owner = _dead_pid()
    record = instance.Record(
        owner,
        12345,
        token,
        port,
        "serve_config.yaml",
        [
            [agent.pid, instance.start_ticks(agent.pid) or 0],
            # A reused pid: the same number, another start time.
            [bystander.pid, (instance.start_ticks(bystander.pid) or 0) + 1],
        ],
    )
    record.write()
    found = {p.pid for p in instance.instance_processes(token, record.processes)}
    assert found == {proxy.pid, proxy_child, agent.pid, agent_child}

    lines = instance.clean_up_earlier(port)

    assert len(lines) == 1
    assert lines[0].startswith(
        f"stopped 4 processes left running by an earlier servekit serve (pid {owner}) "
        "of this checkout: "
    )
    for pid in (proxy.pid, proxy_child, agent.pid, agent_child):
        assert f"({pid})" in lines[0]
        assert not instance.is_running(pid)
    assert instance.is_running(bystander.pid)
    assert instance.is_running(bystander_child)
    assert instance.port_free("127.0.0.1", port)
    assert not record.path.exists()
    assert (state_dir / ".gitignore").read_text() == "*\n"


def test_a_running_instance_is_left_alone(spawned: list[subprocess.Popen[str]]) -> None:
    port, token = free_port(), instance.new_token()
    owner, _ = _start(spawned)
    replica, _ = _start(spawned, token=token)
    record = instance.Record(owner.pid, instance.start_ticks(owner.pid), token, port, "a.yaml")
    record.write()
    running = rf"already running from this checkout on port {port} \(pid {owner.pid}, a\.yaml\)"
    with pytest.raises(instance.InstanceError, match=running):
        instance.clean_up_earlier(port)
    assert instance.clean_up_earlier(free_port()) == []  # another port: no conflict
    assert instance.is_running(replica.pid)
    assert record.path.exists()


def test_this_process_is_recorded_and_never_its_own_leftover() -> None:
    token = instance.new_token()
    record = instance.record_this(token, 8000, Path("serve_config.yaml"))
    assert instance.records() == [record]
    assert record.owner_running()
    assert instance.clean_up_earlier(free_port()) == []
    assert record.path.exists()
