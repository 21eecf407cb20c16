"""Run a `serve_config.yaml` on a local Ray instance, the way `serve run` does.

Used by `servekit serve` (and so `make serve`) and by the integration tests, so
both deploy through the same path as `serve deploy`: the file's applications with
their per-deployment settings and `user_config`, applied by Serve's controller.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from configs.settings import apply_serve_env
from configs.validate import validate_document

apply_serve_env()


class DeployError(RuntimeError):
    """The config is invalid or an application failed to deploy."""


def load_config(path: Path) -> dict[str, Any]:
    """Read a config file and validate it (servekit's checks and Serve's schema)."""
    doc = yaml.safe_load(path.read_text())
    problems = check_document(doc)
    if problems:
        raise DeployError("\n".join(f"{path}: {p}" for p in problems))
    return dict(doc)


def check_document(doc: Any, check_artifacts: bool = True) -> list[str]:
    """Every problem in a parsed config; empty when it can be deployed."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    report = validate_document(doc, check_artifacts=check_artifacts)
    if not report.ok:
        return report.problems
    problems = _unknown_deployment_keys(doc)
    if problems:
        return problems
    try:
        ServeDeploySchema.model_validate(doc)
    except ValidationError as e:
        return [
            ".".join(str(p) for p in err["loc"]) + f": {err['msg']} (Ray Serve schema)"
            for err in e.errors(include_input=False, include_url=False)
        ]
    return []


# Logical CPUs of a local instance. On a cluster `num_cpus` are real reservations;
# on one small machine the default config's replicas (and their autoscaling
# headroom) must still be placeable, so the local instance advertises at least this
# many and the replicas share the real cores.
LOCAL_MIN_LOGICAL_CPUS = 8


def _unknown_deployment_keys(doc: dict[str, Any]) -> list[str]:
    """Serve ignores misspelt deployment settings; a typo must not pass silently."""
    from ray.serve.schema import DeploymentSchema

    known = set(DeploymentSchema.model_fields)
    problems = []
    for i, app in enumerate(doc.get("applications") or []):
        for entry in app.get("deployments") or []:
            for key in sorted(set(entry) - known):
                problems.append(
                    f"applications[{i}].deployments[{entry.get('name')}].{key}: "
                    "unknown field (Ray Serve schema)"
                )
    return problems


def start_ray(
    num_cpus: int | None = None, metrics_port: int | None = None, dashboard: bool = False
) -> None:
    """Start (or join) a local Ray instance in the Serve namespace.

    Without Ray's dashboard unless asked: it is a dozen processes and about 1 GB, and
    nothing servekit does locally needs it (changes are applied as a Ray driver,
    metrics come from each node's agent). Without it, the two head processes left that
    serve nothing on one machine are stopped as well: the autoscaler's monitor (it
    adds and removes nodes; a local instance has one) and the dashboard head, which
    then runs only the usage-stats reporter (off): about 200 MB together."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "namespace": "serve",
        "log_to_driver": True,
        "include_dashboard": dashboard,
    }
    kwargs["num_cpus"] = num_cpus or max(os.cpu_count() or 1, LOCAL_MIN_LOGICAL_CPUS)
    if metrics_port is not None:
        kwargs["_metrics_export_port"] = metrics_port
    ray.init(**kwargs)
    if not dashboard:
        _stop_idle_head_processes()


def _stop_idle_head_processes() -> None:
    """Stop the autoscaler monitor and the usage-stats-only dashboard head of the
    instance this process started (never those of an instance it joined)."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    if node is None or not node.head:
        return
    node.kill_monitor(check_alive=False)
    node.kill_dashboard(check_alive=False)


def ray_address() -> str:
    """The GCS address of the connected instance (what `--address` may name)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


def deploy(doc: dict[str, Any], timeout_s: float = 300.0) -> None:
    """Apply a validated config to the connected Ray instance and wait until it runs."""
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(doc)
    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
        grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
    )
    client.deploy_apps(config, _blocking=False)
    wait_running([app.name for app in config.applications], timeout_s)


def wait_running(names: list[str], timeout_s: float) -> None:
    """Block until every named application is RUNNING; raise on failure or timeout."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        apps = serve.status().applications
        states = {name: apps[name].status if name in apps else "NOT_STARTED" for name in names}
        for name, state in states.items():
            if state == "DEPLOY_FAILED":
                raise DeployError(f"application {name} failed: {apps[name].message}")
        if all(state == "RUNNING" for state in states.values()):
            return
        last = ", ".join(f"{n}={s}" for n, s in states.items())
        time.sleep(0.5)
    raise DeployError(f"applications not running after {timeout_s:g} s ({last})")


def shutdown() -> None:
    """Stop Serve and the Ray instance this process started."""
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
