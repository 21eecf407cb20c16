"""Run a `serve_config.yaml` on a local Ray instance, the way `serve run` does.

Used by `servekit serve` (and so `make serve`) and by the integration tests, so
both deploy through the same path as `serve deploy`: the file's applications with
their per-deployment settings and `user_config`, applied by Serve's controller.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from configs.settings import apply_serve_env
from configs.validate import validate_document
from servekit import instance, ray_worker

apply_serve_env()

# Run by every worker process of an instance started here before its first task.
WORKER_SETUP_HOOK = "servekit.ray_worker.setup"

# How long in-flight HTTP requests get to finish when a local instance stops.
DRAIN_TIMEOUT_S = 5.0
# How long Ray's own shutdown may take before what is left is stopped by its token.
# It takes well under a second; when the stop signal reached Ray's head processes
# too (SIGTERM to the process group), it waits many seconds for a GCS that is going
# away: it is skipped when they have exited already, and cut short otherwise.
RAY_STOP_TIMEOUT_S = 1.0
# How long a stop waits for this driver's deployment handles to close (`close_handles`):
# a router's last report to Serve's controller gets a few seconds, never the whole stop.
HANDLES_CLOSE_TIMEOUT_S = 3.0
# The token of the instance this process started (None: none, or one it joined).
_started_token: str | None = None
# The head this process started to outlive it (see `start_ray`'s `detached`).
_detached_node: Any = None

# How often a long apply says what is still starting.
PROGRESS_EVERY_S = 5.0


class DeployError(RuntimeError):
    """The config is invalid or an application failed to deploy."""


def load_config(path: Path) -> dict[str, Any]:
    """Read a config file and validate it (servekit's checks and Serve's schema).
    Raises DeployError naming the file when it cannot be read, is not YAML or is
    not a valid config."""
    doc = read_config(path)
    problems = check_document(doc)
    if problems:
        raise DeployError("\n".join(f"{path}: {p}" for p in problems))
    return dict(doc)


def precheck(path: Path) -> dict[str, Any]:
    """`load_config` without Ray: the file read and servekit's own checks (Serve's
    schema is checked by `load_config`, in the process that starts Ray)."""
    doc = read_config(path)
    report = validate_document(doc)
    if not report.ok:
        raise DeployError("\n".join(f"{path}: {p}" for p in report.problems))
    return dict(doc)


def read_config(path: Path) -> Any:
    """The parsed YAML of a config file; raises DeployError naming the file (see
    `configedit.read_problem`) when it cannot be read or parsed (caused by the
    OSError when it cannot be read)."""
    from servekit.configedit import read_problem

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DeployError(read_problem(path, e)) from e


def check_document(doc: Any, check_artifacts: bool = True) -> list[str]:
    """Every problem in a parsed config; empty when it can be deployed."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    report = validate_document(doc, check_artifacts=check_artifacts)
    if not report.ok:
        return report.problems
    problems = (
        _malformed_deployments(doc) + _unknown_deployment_keys(doc) + _autoscaling_problems(doc)
    )
    if problems:
        return problems
    try:
        ServeDeploySchema.model_validate(doc)
    except ValidationError as e:
        return [
            ".".join(str(p) for p in err["loc"]) + f": {err['msg']} (Ray Serve schema)"
            for err in e.errors(include_input=False, include_url=False)
        ]
    except (AttributeError, TypeError, KeyError) as e:
        # Serve's own validators assume some shapes the checks above may not cover.
        return [f"applications: not a config Ray Serve can read ({type(e).__name__}: {e})"]
    return []


def _malformed_deployments(doc: dict[str, Any]) -> list[str]:
    """Each deployment entry, of any application, that is not a mapping: Serve's schema
    fails on one with an exception of its own rather than a validation error (servekit's
    own applications were checked already)."""
    return [
        f"applications[{i}].deployments[{j}]: expected a mapping with a name (Ray Serve schema)"
        for i, j, entry in _any_deployment_entries(doc)
        if not isinstance(entry, dict)
    ]


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
    for i, _, entry in _deployment_entries(doc):
        for key in sorted(set(entry) - known, key=str):
            problems.append(
                f"applications[{i}].deployments[{entry.get('name')}].{key}: "
                "unknown field (Ray Serve schema)"
            )
    return problems


def _any_deployment_entries(doc: dict[str, Any]) -> Iterator[tuple[int, int, Any]]:
    """(application index, deployment index, entry) of every entry of a `deployments`
    list in an application that is a mapping, whatever the entry is."""
    apps = doc.get("applications")
    for i, app in enumerate(apps if isinstance(apps, list) else []):
        entries = app.get("deployments") if isinstance(app, dict) else None
        for j, entry in enumerate(entries if isinstance(entries, list) else []):
            yield i, j, entry


def _deployment_entries(doc: dict[str, Any]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """The entries of `_any_deployment_entries` that are mappings. Only servekit's
    applications were checked before; another application's malformed `deployments` is
    left to Serve's schema, which names it, rather than failing here."""
    for i, j, entry in _any_deployment_entries(doc):
        if isinstance(entry, dict):
            yield i, j, entry


def _autoscaling_problems(doc: dict[str, Any]) -> list[str]:
    """Each deployment's `autoscaling_config` read as Serve will read it (Ray's
    `AutoscalingConfig`): Serve's file schema takes any mapping there and checks it only
    when it deploys (`max_replicas` below `min_replicas` fails the apply), and the config
    itself ignores keys it does not know (a misspelt `downscale_delay` is silently
    dropped). Paths as Ray's schema names them: applications.N.deployments.M...."""
    import warnings

    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    problems = []
    for i, j, entry in _deployment_entries(doc):
        config = entry.get("autoscaling_config")
        if config is None:
            continue
        where = f"applications.{i}.deployments.{j}.autoscaling_config"
        if not isinstance(config, dict):
            problems.append(f"{where}: expected a mapping (Ray Serve autoscaling_config)")
            continue
        unknown = _unknown_keys(config, AutoscalingConfig.model_fields, where)
        policy = config.get("policy")
        if isinstance(policy, dict):
            unknown += _unknown_keys(policy, AutoscalingPolicy.model_fields, f"{where}.policy")
        problems += unknown
        try:
            with warnings.catch_warnings():  # Ray's deprecation notes: not problems
                warnings.simplefilter("ignore")
                AutoscalingConfig.model_validate(config)
        except ValidationError as e:
            for err in e.errors(include_input=False, include_url=False):
                path = where + "".join(f".{part}" for part in err["loc"])
                message = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"{path}: {message} (Ray Serve autoscaling_config)")
    return problems


def _unknown_keys(given: dict[str, Any], known: Mapping[str, Any], where: str) -> list[str]:
    """`<where>.<key>: unknown field` for each key not among `known`, with the known one
    it is most likely a misspelling of."""
    import difflib

    problems = []
    for key in sorted(set(given) - set(known), key=str):
        close = difflib.get_close_matches(str(key), list(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"{where}.{key}: unknown field (Ray Serve autoscaling_config){hint}")
    return problems


def quiet_env(logs_dir: Path) -> dict[str, str]:
    """The environment of a local instance whose console shows servekit's events only:
    Serve's components (controller, HAProxy manager, replicas) log to their files
    alone (`RAY_SERVE_LOG_TO_STDERR=0`, Ray's documented switch; a replica's prints
    go there too); servekit's lines all go to `logs_dir/servekit.log` as JSON, and its
    events (and requests that failed with a 5xx) to the console as text."""
    from deployments.observability import logs

    return {
        "RAY_SERVE_LOG_TO_STDERR": "0",
        logs.LOG_FILE_ENV: str(logs_dir / LOG_FILE),
        logs.LOG_FORMAT_ENV: "text",
    }


def before_ray(node_ip_address: str) -> None:
    """What `servekit serve` settles before Ray is imported (Ray reads it once then).

    Token auth, chosen here rather than by Ray's default (which warns that it chose
    it). A loopback `node_ip_address` keeps the instance on this machine: Ray binds its
    servers (GCS, raylet, object manager, agents, the metrics port) to 127.0.0.1 when
    that is the node's address, and takes 127.0.0.1 as the node's address only when
    clusters are off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, its switch for a
    one-machine instance): given as `_node_ip_address`, it is turned into the
    machine's own address."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if node_ip_address in LOOPBACK:
        os.environ[ONE_MACHINE_ENV] = "0"


LOOPBACK = ("127.0.0.1", "localhost")
# Ray's switch between a one-machine instance ("0": everything on the loopback address)
# and one that other nodes may join.
ONE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Under the folder `servekit serve` is given for logs: servekit's JSON log (every
# request, every event), and a link to the Ray session's log folder (Serve's logs are
# under its serve/).
LOG_FILE = "servekit.log"
RAY_LOGS_LINK = "ray"


def start_ray(
    num_cpus: int | None = None,
    metrics_port: int | None = None,
    dashboard: bool = False,
    instance_token: str | None = None,
    quiet_logs: Path | None = None,
    node_ip_address: str | None = None,
    detached: bool = False,
) -> None:
    """Start a local Ray instance in the Serve namespace: always a new one of this
    process's own (`address="local"`), never one that `RAY_ADDRESS` or Ray's record of
    the last `ray start` names.

    `detached`: the instance outlives this process, like one that `ray start --head`
    starts (`servekit serve` deploys from a short-lived process and keeps running
    without Ray; see `cli._supervise`); this process joins it as its first driver.
    Its workers' output is then left in their files for whoever reads them (Ray's log
    monitor, which publishes it to drivers, is stopped: no driver stays).

    Without Ray's dashboard unless asked: it is a dozen processes and about 1 GB, and
    nothing servekit does locally needs it (changes are applied as a Ray driver,
    metrics come from each node's agent). Without it, the two head processes left that
    serve nothing on one machine are stopped as well: the autoscaler's monitor (it
    adds and removes nodes; a local instance has one) and the dashboard head, which
    then runs only the usage-stats reporter (off): about 200 MB together.

    Every process of the instance carries `instance_token` (a fresh one if not
    given) in its environment, and nothing else does: this process drops it again
    once Ray is up, so what it starts later is not mistaken for the instance's.
    Without `instance_token` (nothing recorded the instance beforehand, as
    `servekit serve` does), it is recorded here once it is up, with its GCS address,
    so that `--address local` finds it; `shutdown` removes that record.

    `node_ip_address` is passed on as the node's address (one reachable from elsewhere
    opens Ray's servers to the network); a loopback one is asked for before Ray is
    imported (`before_ray`). None: Ray's choice.

    With `quiet_logs` (a folder), the console is kept for servekit's own lines (see
    `quiet_env`): Ray's INFO lines and servekit's JSON log are written under it instead.

    Neither this process nor the instance's workers import pyarrow for Ray's Arrow
    serializers (`ray_worker.skip_arrow_serializers`): every worker runs
    `ray_worker.setup` first. It is named in the variable a job's
    `worker_process_setup_hook` becomes, set in the environment the instance's
    processes inherit rather than given as the job's runtime_env: a runtime_env makes
    Ray start two more workers (about 80 MB each) that then sit idle, because the
    ones it started at first do not match it."""
    import ray
    from ray._private import ray_constants

    global _started_token
    if ray.is_initialized():
        return
    ray_worker.skip_arrow_serializers()
    kwargs: dict[str, Any] = {
        # A new instance even when RAY_ADDRESS (or the last `ray start`) names another:
        # joining it would fail on `num_cpus` below, or serve on someone else's cluster.
        "address": "local",
        "namespace": "serve",
        # Workers' stderr reaches this console: servekit's events, real warnings.
        "log_to_driver": True,
        "include_dashboard": dashboard,
    }
    if node_ip_address is not None and node_ip_address not in LOOPBACK:
        kwargs["_node_ip_address"] = node_ip_address
    if quiet_logs is not None:
        quiet_logs.mkdir(parents=True, exist_ok=True)
        os.environ.update(quiet_env(quiet_logs))
        kwargs["logging_level"] = logging.WARNING
        # This driver's own Serve lines ("Started Serve in namespace ...").
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    kwargs["num_cpus"] = num_cpus or max(os.cpu_count() or 1, LOCAL_MIN_LOGICAL_CPUS)
    if metrics_port is not None:
        kwargs["_metrics_export_port"] = metrics_port
    token = instance_token or instance.new_token()
    own_env = {
        instance.INSTANCE_ENV: token,
        ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: WORKER_SETUP_HOOK,
    }
    os.environ.update(own_env)
    try:
        if detached:
            _start_detached_head(kwargs)
            ray.init(**_driver_of(kwargs, _detached_node.address))
        else:
            ray.init(**kwargs)
    finally:
        for name in own_env:
            del os.environ[name]
    node = _own_head_node()
    if node is None:
        return
    _started_token = token
    if instance_token is None:
        instance.record_started(token, ray_address())
    if quiet_logs is not None:
        _link(quiet_logs / RAY_LOGS_LINK, Path(node.get_logs_dir_path()))
    if detached:
        # Its driver goes: the workers' output is read from their files instead.
        node.kill_log_monitor(check_alive=False)
    if not dashboard:
        # The autoscaler monitor and the usage-stats-only dashboard head.
        node.kill_monitor(check_alive=False)
        node.kill_dashboard(check_alive=False)


def _start_detached_head(init_kwargs: dict[str, Any]) -> None:
    """Start the head processes of a new instance the way `ray start --head` does: not
    tied to this process (no reaper, no kill-on-parent-death), so that they keep
    running when it exits; with what `ray.init` would have given them."""
    global _detached_node
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    # What `ray.init` settles before it starts a new instance.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ensure_token_if_auth_enabled({}, create_token_if_missing=True)
    params = RayParams(
        node_ip_address=init_kwargs.get("_node_ip_address"),
        redirect_output=None,
        num_cpus=init_kwargs["num_cpus"],
        include_dashboard=init_kwargs["include_dashboard"],
        metrics_export_port=init_kwargs.get("_metrics_export_port"),
    )
    _detached_node = Node(params, head=True, shutdown_at_exit=False, spawn_reaper=False)


def _driver_of(init_kwargs: dict[str, Any], address: str) -> dict[str, Any]:
    """`ray.init`'s arguments for joining the detached head as its first driver."""
    keep = ("namespace", "logging_level", "_node_ip_address")
    return {
        "address": address,
        "log_to_driver": False,
        **{k: v for k, v in init_kwargs.items() if k in keep},
    }


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target`, replacing an earlier link."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


def _own_head_node() -> Any:
    """Ray's head node handle when this process started the instance (None when it
    joined one)."""
    from ray._private import worker

    if _detached_node is not None:
        return _detached_node
    node = getattr(worker, "_global_node", None)
    return node if node is not None and node.head else None


def logs_dir() -> str:
    """The log folder of the instance this process started ("" when it joined one)."""
    node = _own_head_node()
    return str(node.get_logs_dir_path()) if node is not None else ""


def disconnect() -> None:
    """Leave the detached instance this process started running, for its owner to stop
    (`stop_instance`): only this driver goes."""
    import ray

    global _started_token, _detached_node
    _started_token = _detached_node = None
    close_handles()
    ray.shutdown()


def close_handles() -> None:
    """Stop the routers of the deployment handles this driver made
    (`serve.get_deployment_handle`), before Ray goes. Each runs a task that reports
    its queue to Serve's controller every few seconds; left running, its next report
    calls into Ray after `ray.shutdown()`, and Ray's auto-connect starts a new local
    instance from that thread, as late as the interpreter's exit. Bounded by
    `HANDLES_CLOSE_TIMEOUT_S`, and a handle that fails to close never stops the stop:
    the instance goes regardless."""
    from ray.serve import context

    client: Any = context._global_client  # None until this driver used Serve
    if client is None:
        return

    def close() -> None:
        try:
            client.shutdown_cached_handles()
        except Exception as e:  # whatever a router raises, the stop goes on
            logging.getLogger("servekit").warning("deployment handles not closed: %s", e)

    closer = threading.Thread(target=close, name="close-handles", daemon=True)
    closer.start()
    closer.join(HANDLES_CLOSE_TIMEOUT_S)


def ray_address() -> str:
    """The GCS address of the connected instance (what `--address` may name)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


def deploy(
    doc: dict[str, Any], timeout_s: float = 300.0, progress: Callable[[str], None] | None = None
) -> None:
    """Apply a validated config to the connected Ray instance and wait until it runs;
    `progress` is told, every few seconds meanwhile, what is still starting."""
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(doc)
    # Serve's options are set when it starts; asked to start again it says, at every
    # apply, that new options "will not be applied" (which reads as a failure). Only a
    # real difference is worth a line.
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        client = serve_api.serve_start(
            http_options=config.http_options.model_dump(),
            proxy_location=config.proxy_location,
            grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
        )
    elif progress is not None:
        for line in http_options_kept(client.http_config, config.http_options):
            progress(line)
    client.deploy_apps(config, _blocking=False)
    wait_running([app.name for app in config.applications], timeout_s, progress)


def http_options_kept(running: Any, declared: Any) -> list[str]:
    """The `http_options` the file changes, which the running instance keeps until it
    restarts (Serve applies them only when it starts)."""
    return [
        f"http_options.{name}: the file says {getattr(declared, name)!r}, the running "
        f"instance keeps {getattr(running, name)!r} until it restarts"
        for name in sorted(declared.model_fields_set)
        if getattr(declared, name) != getattr(running, name, None)
    ]


def wait_running(
    names: list[str], timeout_s: float, progress: Callable[[str], None] | None = None
) -> None:
    """Block until every named application is RUNNING; raise on failure or timeout.
    `progress` is told every `PROGRESS_EVERY_S` which deployments are still starting."""
    from ray import serve

    started = time.monotonic()
    deadline = started + timeout_s
    next_report = started + PROGRESS_EVERY_S
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
        if progress is not None and time.monotonic() >= next_report:
            next_report += PROGRESS_EVERY_S
            waiting = [
                f"{deployment} {_replicas_text(status.replica_states)}"
                for name in names
                if name in apps
                for deployment, status in apps[name].deployments.items()
                if str(getattr(status.status, "value", status.status)) != "HEALTHY"
            ]
            progress(
                f"still applying ({time.monotonic() - started:.0f} s): "
                + ("; ".join(waiting) or last)
            )
        time.sleep(0.5)
    raise DeployError(f"applications not running after {timeout_s:g} s ({last})")


def _replicas_text(states: Mapping[Any, int]) -> str:
    """`1 of 2 replicas running, 1 starting` from Serve's replica states."""
    by_state = {str(getattr(k, "value", k)).lower(): n for k, n in states.items() if n}
    running = by_state.pop("running", 0)
    total = running + sum(by_state.values())
    rest = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()))
    return f"{running} of {total} replicas running" + (f", {rest}" if rest else "")


def shutdown(
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
    hurry: threading.Event | None = None,
    known: Sequence[Sequence[int]] = (),
    settle_s: float = 0.0,
) -> bool:
    """Stop Serve and the Ray instance this process started, in seconds.

    After the last request is answered, the replicas get `settle_s` to write what they
    still hold (usage counts are written every `auth.usage_flush_s`).

    In-flight HTTP requests get up to `drain_timeout_s` to finish (less once `hurry`
    is set): HAProxy stops accepting and exits when its open requests are answered.
    Then Ray stops its processes, and whatever of the instance is still running
    (HAProxy is a worker's child and outlives a killed worker) is stopped by its
    token (with the `known` (pid, start ticks) of its processes, and those seen as
    the stop begins). Returns False when Ray's own shutdown did not finish in time
    (it is left running in a background thread; the instance's processes are gone
    regardless).

    Serve's graceful shutdown is not used for an instance that stops entirely:
    behind HAProxy it holds the ingress replica open for 30 s so that load balancers
    in front of a cluster can deregister it (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_
    PERIOD_S), and `serve.shutdown()` gives up only after 30 s. For an instance this
    process joined, Serve is shut down as `serve shutdown` does."""
    import ray
    from ray import serve

    global _started_token, _detached_node
    token, _started_token = _started_token, None
    close_handles()
    if token is None:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        return True
    finished = threading.Event()

    def stop_ray() -> None:
        ray.shutdown()
        finished.set()

    def ray_first() -> None:
        if _head_running():
            threading.Thread(target=stop_ray, name="ray-shutdown", daemon=True).start()
            finished.wait(RAY_STOP_TIMEOUT_S)

    stop_instance(token, known, drain_timeout_s, hurry, settle_s, ray_first)
    _detached_node = None
    return finished.is_set()


def stop_instance(
    token: str,
    known: Sequence[Sequence[int]] = (),
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
    hurry: threading.Event | None = None,
    settle_s: float = 0.0,
    before_sweep: Callable[[], None] | None = None,
) -> None:
    """Stop a local instance by its token, without Ray (see `shutdown`): HAProxy
    drained, the replicas given `settle_s`, then every process of the instance
    stopped (`before_sweep` runs just before)."""
    known = [*known, *instance.identities(instance.instance_processes(token, known))]
    drain_http(token, drain_timeout_s, hurry)
    if settle_s > 0 and not (hurry and hurry.is_set()):
        (hurry or threading.Event()).wait(settle_s)
    if before_sweep is not None:
        before_sweep()
    instance.sweep(token, known, grace_s=1.0)
    instance.forget(token)


def _head_running() -> bool:
    """Whether the GCS and the raylet this process started are still running."""
    from ray._private import ray_constants

    node = _own_head_node()
    kinds = (ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET)
    return node is not None and all(
        info.process.poll() is None for kind in kinds for info in node.all_processes.get(kind, [])
    )


def drain_http(token: str, timeout_s: float, hurry: threading.Event | None = None) -> None:
    """Soft-stop the instance's HAProxy (SIGUSR1: it closes its listeners, answers
    the requests it holds, closes idle connections, then exits) and wait for that,
    at most `timeout_s`."""
    proxies = [p for p in instance.instance_processes(token) if p.program == "haproxy"]
    instance.signal_all(proxies, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while proxies and time.monotonic() < deadline and not (hurry and hurry.is_set()):
        proxies = instance.wait_gone(proxies, 0.1)
