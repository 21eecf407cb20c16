"""`servekit serve` (what `make serve` runs): up in the foreground, SIGTERM stops it all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cluster_util import haproxy_ports_env
from tests.conftest import free_port
from tests.integration.conftest import make_test_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _session_processes(sid: int, columns: str = "pid=,comm=") -> list[str]:
    # -ww: full command lines whatever the terminal width (a long checkout path cuts them at 80).
    out = subprocess.run(
        ["ps", "-ww", "-eo", f"sid=,{columns}"], capture_output=True, text=True
    ).stdout
    return [
        line.strip() for line in out.splitlines() if line.split() and line.split()[0] == str(sid)
    ]


def test_serve_runs_in_foreground_and_stops_on_sigterm(tmp_path: Path, example_store: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(make_test_config(port)))
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servekit",
            "serve",
            str(config),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **haproxy_ports_env()},
    )
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(1)
        assert ready, (tmp_path / "serve.log").read_text()[-3000:]
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings", json={"model": "minilm", "input": "up"}
        )
        assert r.status_code == 200
        # The head processes a one-machine instance has no use for are gone.
        commands = "\n".join(_session_processes(proc.pid, "args="))
        assert "gcs_server" in commands
        assert "autoscaler/_private/monitor.py" not in commands
        assert "dashboard/dashboard.py" not in commands
        _promote_and_status_without_dashboard(tmp_path, config, port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
    deadline = time.monotonic() + 30
    while _session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(1)
    assert _session_processes(proc.pid) == []
    assert "servekit: stopping" in (tmp_path / "serve.log").read_text()


def _promote_and_status_without_dashboard(tmp_path: Path, config: Path, port: int) -> None:
    """The instance runs without Ray's dashboard: promote, apply and status reach it
    as a Ray driver, at the address `servekit serve` printed."""
    deadline = time.monotonic() + 60
    log = ""
    while "Apply" not in log and time.monotonic() < deadline:
        time.sleep(0.5)
        log = (tmp_path / "serve.log").read_text()
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
    weights = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        detail = httpx.get(f"http://127.0.0.1:{port}/v1/models/minilm", timeout=10).json()
        weights = {v["name"]: v["weight"] for v in detail["versions"]}
        if weights["v2"] == 50:
            break
        time.sleep(1)
    assert weights["v2"] == 50, weights
    assert weights["v1"] == 50, weights
    out = subprocess.run(
        [sys.executable, "-m", "servekit", "status", "--url", f"http://127.0.0.1:{port}",
         "--address", address.group(1)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "replica counts unavailable" not in out.stdout
    # Every version, dedicated or inline (counted as its Ingress replicas), has a count.
    rows = [row.split() for row in out.stdout.splitlines() if re.match(r"  v\d", row)]
    assert len(rows) >= 6, out.stdout
    assert all(re.fullmatch(r"\d+/\d+", row[3]) for row in rows), out.stdout


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
