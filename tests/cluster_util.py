"""Start and stop real Ray clusters (`ray start`) for tests, by process ids.

Never `ray stop`: it would stop every Ray process on the machine, the test session's
own instance included. Each node runs `ray start --block` in its own process session;
stopping kills that session's processes and any left with the node's temp dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from configs.settings import SERVE_ENV
from servekit.rollout_cli import ray_auth_headers
from tests.conftest import free_port


@dataclass
class RayNode:
    """One `ray start --block` process and what it listens on."""

    proc: subprocess.Popen[bytes]
    temp_dir: str
    gcs_address: str
    dashboard: str = ""
    log: Path = field(default_factory=Path)
    metrics_port: int = 0  # the node's metrics export (every replica on it)

    def pids(self) -> list[int]:
        """Live processes of this node."""
        return _pids_of(self.proc.pid, self.temp_dir)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the node and every process it started: a signal to each, then SIGKILL
        to what still runs after 10 s (a node's `ray start --block` waited out the 30 s
        it was given each time, and its processes another 30: a minute of every
        cluster test's teardown)."""
        for pid in _pids_of(self.proc.pid, self.temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=8)
        deadline = time.monotonic() + 2
        while _pids_of(self.proc.pid, self.temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in _pids_of(self.proc.pid, self.temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _pids_of(sid: int, temp_dir: str) -> list[int]:
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=False
    ).stdout
    pids = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2:
            continue
        pid, psid = int(parts[0]), int(parts[1])
        args = parts[2] if len(parts) > 2 else ""
        if pid != os.getpid() and (psid == sid or temp_dir in args):
            pids.append(pid)
    return pids


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def cluster_env() -> dict[str, str]:
    """Environment for processes that start or talk to a test cluster.

    Test clusters listen on 127.0.0.1 only and run without Ray's token auth, so the
    `ray`, `serve` and `servekit` commands reach them without a token. They run with
    the Serve settings servekit ships (the RayService sets the same env).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(SERVE_ENV)
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def haproxy_ports_env(worker: bool = False) -> dict[str, str]:
    """Fresh ports for the HAProxy a Ray node runs in front of Serve (its stats and
    metrics listeners; on a worker node also its HTTP listener): several nodes, or
    instances, share this machine in the tests, while on a cluster each has its own."""
    env = {
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    }
    if worker:
        env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(free_port())
    return env


def start_head(log_dir: Path, num_cpus: int = 8, resources: str | None = None) -> RayNode:
    """A head node on fresh ports, with the dashboard (Serve's REST API) on 127.0.0.1."""
    temp_dir = tempfile.mkdtemp(prefix="skray-", dir="/tmp")
    gcs, dashboard, metrics = free_port(), free_port(), free_port()
    log = log_dir / "ray-head.log"
    args = [
        _ray_cli(), "start", "--head", "--block",
        f"--port={gcs}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={free_port()}",
        "--disable-usage-stats",
    ]  # fmt: skip
    if resources:
        args.append(f"--resources={resources}")
    proc = _launch(args, log, haproxy_ports_env())
    node = RayNode(
        proc, temp_dir, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", log, metrics
    )
    _wait_dashboard(node)
    return node


def start_worker(head: RayNode, log_dir: Path, num_cpus: int, resources: str) -> RayNode:
    """A second node joining `head`, with its own resources."""
    log = log_dir / "ray-worker.log"
    args = [
        _ray_cli(), "start", "--block", f"--address={head.gcs_address}",
        f"--num-cpus={num_cpus}", f"--resources={resources}",
        f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats",
    ]  # fmt: skip
    proc = _launch(args, log, haproxy_ports_env(worker=True))
    return RayNode(proc, head.temp_dir + "-worker-unused", head.gcs_address, "", log)


def _launch(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`ray start --block` in its own process session, so it can be stopped by ids."""
    return subprocess.Popen(
        args,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**cluster_env(), **env},
    )


def _wait_dashboard(node: RayNode, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {node.log.read_text()[-2000:]}")
        try:
            r = httpx.get(f"{node.dashboard}/api/version", timeout=2, headers=ray_auth_headers())
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    node.stop()
    raise RuntimeError("the Ray dashboard did not come up")


def serve_deploy(config_path: Path, node: RayNode) -> None:
    """`serve deploy` a config file to the node's cluster."""
    serve_cli = Path(sys.executable).with_name("serve")
    # A deploy is idempotent; the dashboard sometimes fails one while the Serve
    # controller it has just started is still coming up: try again, then report.
    for attempt in range(3):
        done = subprocess.run(
            [str(serve_cli), "deploy", str(config_path), "--address", node.dashboard],
            capture_output=True,
            text=True,
            env=cluster_env(),
            check=False,
        )
        if done.returncode == 0:
            return
        if attempt < 2:
            time.sleep(3)
    raise RuntimeError(f"serve deploy failed: {done.stdout[-2000:]} {done.stderr[-3000:]}")


def serve_details(node: RayNode) -> dict[str, object]:
    """Serve's REST view of the cluster: applications, deployments, replicas."""
    data: dict[str, object] = httpx.get(
        f"{node.dashboard}/api/serve/applications/", timeout=10, headers=ray_auth_headers()
    ).json()
    return data
