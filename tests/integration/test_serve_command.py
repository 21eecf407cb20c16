"""`servekit serve` (what `make serve` runs): up in the foreground; Ctrl-C or SIGTERM
stops it all within seconds, in-flight requests answered; a start after a hard kill
cleans up what the killed one left, and names a foreign holder of its port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from servekit import instance
from tests.cluster_util import haproxy_ports_env
from tests.conftest import REPO_ROOT, TEST_SECRETS, TEST_TENANT, auth_headers, free_port
from tests.integration.conftest import make_test_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What `make serve` users are promised: stopped within this, nothing left running.
STOP_BOUND_S = 10.0


def _session_processes(sid: int, columns: str = "pid=,comm=") -> list[str]:
    """Running processes of a session. Zombies are left out: they have exited and hold
    no port or memory (some containers' init reaps them late)."""
    # -ww: full command lines whatever the terminal width (a long checkout path cuts them at 80).
    out = subprocess.run(
        ["ps", "-ww", "-eo", f"sid=,stat=,{columns}"], capture_output=True, text=True
    ).stdout
    return [
        line.strip()
        for line in out.splitlines()
        if line.split() and line.split()[0] == str(sid) and not line.split()[1].startswith("Z")
    ]


@contextlib.contextmanager
def _serve(config: Path, metrics_port: int, log: Path, env: dict[str, str]) -> Iterator[Any]:
    """`servekit serve` in its own session, as a terminal or a supervisor runs it;
    whatever is left of it is killed at the end, by its session."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "servekit", "serve", str(config),
             "--metrics-port", str(metrics_port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for line in _session_processes(proc.pid, "pid="):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line.split()[-1]), signal.SIGKILL)


def _wait_serving(proc: Any, log: Path, port: int, timeout_s: float = 180) -> None:
    """Until this process says it serves and answers an embedding on `port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if "servekit: serving" in log.read_text():
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/v1/embeddings",
                    json={"model": "minilm", "input": "up"},
                    headers=auth_headers(),
                    timeout=30,
                )
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(1)
    raise AssertionError(log.read_text()[-3000:])


def _stop(proc: Any, signum: int, forwarded: bool = False) -> float:
    """Signal the whole process group (and `servekit serve` again at once when
    `forwarded`, as `make serve` passes a SIGTERM on); seconds until it exited 0."""
    began = time.monotonic()
    os.killpg(proc.pid, signum)
    if forwarded:
        proc.send_signal(signum)
    assert proc.wait(timeout=60) == 0
    return time.monotonic() - began


def _assert_all_gone(sid: int, port: int) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
    assert _session_processes(sid, "args=") == []
    assert not (instance.STATE_DIR / f"serve-{sid}.json").exists()


def test_serve_runs_in_foreground_and_stops_on_ctrl_c(
    tmp_path: Path, example_store: Path, report: list[str]
) -> None:
    port, metrics_port = free_port(), free_port()
    doc = make_test_config(port)
    slow = doc["applications"][0]["args"]["models"]["minilm"]["versions"]["v2-slow"]
    slow["fault_injection"] = {"extra_latency_ms": 2500}
    config, log = tmp_path / "serve_config.yaml", tmp_path / "serve.log"
    config.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **haproxy_ports_env()}
    with _serve(config, metrics_port, log, env) as proc:
        _wait_serving(proc, log, port)
        # The head processes a one-machine instance has no use for are gone.
        commands = "\n".join(_session_processes(proc.pid, "args="))
        assert "gcs_server" in commands
        assert "autoscaler/_private/monitor.py" not in commands
        assert "dashboard/dashboard.py" not in commands
        # The workers' lines reach the console from their files, without Ray's log monitor.
        assert "log_monitor.py" not in commands
        relayed = r"^\(ServeReplica:servekit:Ingress pid=\d+\) info \S+: live config applied"
        assert re.search(relayed, log.read_text(), re.MULTILINE), log.read_text()[-3000:]
        # Ray's driver, which started and deployed it, leaves once it has said where it
        # serves; the head is this one's then.
        deadline = time.monotonic() + 30
        while True:
            rows = [r.split(None, 4) for r in _session_processes(proc.pid, "pid=,ppid=,args=")]
            drivers = [r[2] for r in rows if "-m servekit serve" in r[4]]
            if drivers == [str(proc.pid)] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert drivers == [str(proc.pid)], rows
        assert [r[3] for r in rows if "gcs_server" in r[4]] == [str(proc.pid)], rows
        _promote_rollback_and_status_without_dashboard(log, config, port)
        # Ctrl-C, as a terminal sends it: SIGINT to the foreground process group.
        # A request in flight is answered; a new connection is refused at once.
        # Usage written so far; the request in flight is counted after the stop too.
        time.sleep(1.5)
        before = _test_tenant_usage()
        answers: list[int] = []
        call = threading.Thread(target=_slow_call, args=(port, answers))
        call.start()
        time.sleep(1.0)
        stop_s = _stop(proc, signal.SIGINT)
        call.join()
        assert answers == [200]
        assert stop_s < STOP_BOUND_S, stop_s
        assert _test_tenant_usage() == (before[0] + 1, before[1] + 1)
    report.append(f"servekit serve: stopped by Ctrl-C in {stop_s:.1f} s, a 2.5 s request in flight")
    _assert_all_gone(proc.pid, port)
    console = log.read_text()
    assert "servekit: stopping" in console
    # A quiet console: servekit's lines only, and the last one says it stopped.
    assert console.splitlines()[-1].startswith("servekit: stopped in "), console[-2000:]
    assert "Failed to push error to driver" not in console
    assert not re.search(r"\bINFO\b", console), console[:3000]
    assert '"msg":"request"' not in console  # the access log is in the file
    assert "will not be applied" not in console


def _test_tenant_usage() -> tuple[int, int]:
    """(requests, texts) the registry holds for the test tenant today."""
    from datetime import UTC, datetime

    from stores.registry_sql import open_registry

    registry = open_registry(TEST_SECRETS["SERVEKIT_REGISTRY_DSN"])
    today = datetime.now(UTC).date()
    rows = registry.usage(TEST_TENANT, today, today)
    registry.close()
    return sum(r.requests for r in rows), sum(r.texts for r in rows)


def _slow_call(port: int, answers: list[int]) -> None:
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/embeddings",
        json={"model": "minilm", "input": "in flight"},
        headers={"X-Model-Version": "v2-slow", **auth_headers()},
        timeout=30,
    )
    answers.append(r.status_code)


def test_serve_after_a_hard_kill_and_sigterm_to_its_group(
    tmp_path: Path, example_store: Path, report: list[str]
) -> None:
    """SIGKILL leaves processes behind (HAProxy, Ray's agents): the next start of
    this checkout stops them and serves on the same ports. SIGTERM to the process
    group, as a supervisor sends it, reaches Ray's processes too, and `servekit serve`
    twice when `make serve` forwards it."""
    port, metrics_port = free_port(), free_port()
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["port"] = port
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **haproxy_ports_env()}
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with _serve(config, metrics_port, first_log, env) as first:
        _wait_serving(first, first_log, port)
        first.kill()
        first.wait()
        with _serve(config, metrics_port, second_log, env) as second:
            _wait_serving(second, second_log, port)
            assert _session_processes(first.pid, "args=") == [], second_log.read_text()[:2000]
            # Ray's agents alone outlive a killed instance by half a minute or more.
            cleaned = (
                rf"^servekit: stopped \d+ processes left running by an earlier servekit serve "
                rf"\(pid {first.pid}\) of this checkout: "
            )
            assert re.search(cleaned, second_log.read_text(), re.MULTILINE), second_log.read_text()
            # The signal twice, as `servekit serve` gets it under `make serve`.
            stop_s = _stop(second, signal.SIGTERM, forwarded=True)
            assert stop_s < STOP_BOUND_S, stop_s
    report.append(f"servekit serve: stopped by SIGTERM to its process group in {stop_s:.1f} s")
    _assert_all_gone(second.pid, port)
    assert second_log.read_text().splitlines()[-1].startswith("servekit: stopped in ")
    assert not (instance.STATE_DIR / f"serve-{first.pid}.json").exists()


def test_serve_names_what_holds_its_port(tmp_path: Path, example_store: Path) -> None:
    port = free_port()
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["port"] = port
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(doc))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time; s = socket.socket(); "
         "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('up', flush=True); "
         "time.sleep(120)", str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "up\n"
        log = tmp_path / "serve.log"
        with _serve(config, free_port(), log, {**os.environ}) as proc:
            assert proc.wait(timeout=60) == 1
    finally:
        holder.kill()
        holder.wait()
    assert (
        f"servekit: port {port} (http_options.port of {config}) is in use by pid {holder.pid} "
        f"({sys.executable} -c import socket"
    ) in log.read_text()


def _promote_rollback_and_status_without_dashboard(
    serve_log: Path, config: Path, port: int
) -> None:
    """The instance runs without Ray's dashboard: promote, rollback, apply and status
    reach it as a Ray driver, at the address `servekit serve` printed. Rollback right
    after a promotion undoes it."""
    deadline = time.monotonic() + 60
    log = ""
    while "Apply" not in log and time.monotonic() < deadline:
        time.sleep(0.5)
        log = serve_log.read_text()
    assert "dashboard" not in log.split("servekit: serving", 1)[1].split("Apply", 1)[0]
    address = re.search(r"^  ray +(\S+)$", log, re.MULTILINE)
    assert address, log[-2000:]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    base = ["--config", str(config), "--address", address.group(1)]
    out = subprocess.run(
        [sys.executable, "-m", "servekit", "promote", "minilm", "v2", "--weight", "50", *base],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"applied to {address.group(1)}" in out.stdout
    assert _weights_become(port, {"v1": 50, "v2": 50})
    out = subprocess.run(
        [sys.executable, "-m", "servekit", "rollback", "minilm", *base],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "note: undid the last promotion of minilm v2" in out.stdout
    assert _weights_become(port, {"v1": 90, "v2": 10})
    status = [
        sys.executable,
        "-m",
        "servekit",
        "status",
        "--url",
        f"http://127.0.0.1:{port}",
        *base,
    ]
    out = subprocess.run(status, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "differs" not in out.stdout  # the file and the service agree
    assert "replica counts unavailable" not in out.stdout
    # Every version, dedicated or inline (counted as its Ingress replicas), has a count.
    rows = [row.split() for row in out.stdout.splitlines() if re.match(r"  v\d", row)]
    assert len(rows) >= 6, out.stdout
    assert all(re.fullmatch(r"\d+/\d+", row[3]) for row in rows), out.stdout
    # Written without applying: status names the difference; the same promote, without
    # --no-apply, applies what the file already says.
    promote = [sys.executable, "-m", "servekit", "promote", "minilm", "v2", "--weight", "50"]
    out = subprocess.run([*promote, *base, "--no-apply"], capture_output=True, text=True,
                         env=env, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not applied: `servekit apply" in out.stdout
    out = subprocess.run(status, capture_output=True, text=True, env=env, check=False)
    assert "differs: weights: the file says" in out.stdout, out.stdout
    assert "v1=90 v2=10" in out.stdout.split("differs: weights:", 1)[1].splitlines()[0]
    out = subprocess.run([*promote, *base], capture_output=True, text=True, env=env,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "already says so; applying it" in out.stdout
    assert _weights_become(port, {"v1": 50, "v2": 50})


def _weights_become(port: int, expected: dict[str, int], timeout_s: float = 60) -> bool:
    """Until the service reports these weights (of the versions named)."""
    deadline = time.monotonic() + timeout_s
    weights: dict[str, int] = {}
    while time.monotonic() < deadline:
        detail = httpx.get(
            f"http://127.0.0.1:{port}/v1/models/minilm", headers=auth_headers(), timeout=10
        ).json()
        weights = {v["name"]: v["weight"] for v in detail["versions"]}
        if {v: weights.get(v) for v in expected} == expected:
            return True
        time.sleep(1)
    raise AssertionError(f"weights {weights}, expected {expected}")


def test_validate_command(tmp_path: Path, example_store: Path) -> None:
    from tests.conftest import REPO_ROOT

    ok = subprocess.run(
        [sys.executable, "-m", "servekit", "validate", str(REPO_ROOT / "serve_config.yaml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    doc["applications"][0]["deployments"][0]["num_replicaz"] = 3
    bad.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [sys.executable, "-m", "servekit", "validate", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "num_replicaz" in out.stderr
    assert "Ray Serve schema" in out.stderr
