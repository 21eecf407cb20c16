"""The `servekit` command: validate and serve a `serve_config.yaml`."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from deployments.tenancy.access import UnsafeSettings
from servekit import instance


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `servekit` command."""
    parser = argparse.ArgumentParser(prog="servekit", description="servekit model serving")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a config on a local Ray instance (foreground)")
    serve.add_argument("config", type=Path, nargs="?", default=Path("serve_config.yaml"))
    serve.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port")
    serve.add_argument(
        "--dashboard",
        action="store_true",
        help="also run Ray's dashboard on 127.0.0.1:8265 (about 1 GB more memory)",
    )
    serve.add_argument(
        "--drain-timeout-s",
        type=float,
        default=5.0,
        help="on Ctrl-C or SIGTERM, how long in-flight requests get to finish (seconds)",
    )
    serve.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's, Serve's and HAProxy's INFO lines and servekit's JSON log (every "
        "request) on the console (by default they go to files under .servekit/logs/)",
    )
    serve.add_argument(
        "--node-ip-address",
        default="127.0.0.1",
        help="the address Ray's servers and the metrics port listen on: 127.0.0.1 "
        "(default) keeps them on this machine; this machine's address opens them to "
        "the network (the metrics port then on every interface)",
    )
    check = sub.add_parser("validate", help="check a config without starting anything")
    check.add_argument("config", type=Path, nargs="?", default=Path("serve_config.yaml"))
    _rollout_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "serve":
        # Not passed on to what the starter starts (Ray's processes).
        owner = os.environ.pop(OWNER_ENV, None)
        if not owner:
            argv = sys.argv[1:] if argv is None else argv
            return _supervise(argv, args.config, args.drain_timeout_s)
        return _serve(
            args.config,
            args.metrics_port,
            args.dashboard,
            args.drain_timeout_s,
            args.verbose,
            args.node_ip_address,
            owner=int(owner),
        )
    return _run_rollout_command(args)


ADDRESS_HELP = (
    "where to apply: 'local' (the instance `servekit serve` runs here; default), "
    "a GCS address host:port, or a Ray dashboard URL http://host:8265 (clusters)"
)


def _rollout_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from servekit.rollout_cli import DEFAULT_ADDRESS, DEFAULT_URL

    for name, text in (
        ("promote", "give a version a traffic weight, edit the file, show the diff, apply it"),
        ("rollback", "undo a model's last promotion (or send all traffic to --to) and apply"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("model")
        if name == "promote":
            cmd.add_argument("version")
            cmd.add_argument("--weight", type=int, required=True, help="percent, 0..100")
        else:
            cmd.add_argument(
                "--to",
                help="send all traffic to this version (default: undo the last promotion "
                "recorded in the file; without one, all traffic to the primary)",
            )
        # A rollback gives traffic too (to each version that had none): the same check.
        cmd.add_argument(
            "--allow-incomplete-index",
            action="store_true",
            help="give traffic although the version's search index of some catalog is "
            "still incomplete (searches keep to versions whose index is, until it is)",
        )
        cmd.add_argument(
            "--url",
            default=DEFAULT_URL,
            help="servekit's HTTP address, asked whether the version's search indexes "
            "are complete (default: SERVEKIT_URL, else http://127.0.0.1:8000)",
        )
        cmd.add_argument("--config", type=Path, default=Path("serve_config.yaml"))
        cmd.add_argument("--dry-run", action="store_true", help="show the diff only")
        cmd.add_argument("--no-apply", action="store_true", help="write the file, do not deploy")
        cmd.add_argument("--address", default=DEFAULT_ADDRESS, help=ADDRESS_HELP)
    apply = sub.add_parser("apply", help="apply the whole file to a running instance")
    apply.add_argument("config", type=Path, nargs="?", default=Path("serve_config.yaml"))
    apply.add_argument("--address", default=DEFAULT_ADDRESS, help=ADDRESS_HELP)
    show = sub.add_parser("status", help="versions, weights, replicas, traffic, rollout state")
    show.add_argument("--url", default=DEFAULT_URL, help="servekit's HTTP address")
    show.add_argument("--address", default=DEFAULT_ADDRESS, help=ADDRESS_HELP)
    show.add_argument(
        "--config",
        type=Path,
        default=Path("serve_config.yaml"),
        help="the file to compare with what is deployed",
    )
    rollout = sub.add_parser("rollout", help="the state of a model's canary watch")
    verbs = rollout.add_subparsers(dest="verb", required=True)
    clear = verbs.add_parser(
        "clear", help="forget a model's canary rollback: the canary gets its weight back"
    )
    clear.add_argument("model")
    clear.add_argument("--config", type=Path, default=Path("serve_config.yaml"))
    clear.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        help="'local' (default) or a GCS address host:port: the judge is a Ray actor",
    )
    from servekit import index_cli, tenants_cli

    tenants_cli.add_commands(sub, DEFAULT_URL)
    index_cli.add_commands(sub, "serve_config.yaml")
    from servekit import contract

    contract.add_commands(sub)
    from servekit import features_cli

    features_cli.add_commands(sub)


def _run_rollout_command(args: argparse.Namespace) -> int:
    from servekit import rollout_cli, tenants_cli

    if args.command == "tenants":
        return tenants_cli.run(args)
    if args.command == "features":
        from servekit import features_cli

        return features_cli.run(args)
    if args.command == "index":
        from servekit import index_cli

        return index_cli.run(args)
    if args.command == "api":
        from servekit import contract

        return contract.run(args)

    # Before Ray is imported: it reads its auth mode (and whether clusters are on) once.
    rollout_cli.token_mode_if_token()
    rollout_cli.loopback_if_local(args.address)
    if args.command == "status":
        return rollout_cli.status(args.url.rstrip("/"), args.address.rstrip("/"), args.config)
    if args.command == "apply":
        return rollout_cli.deploy(args.config, args.address.rstrip("/"))
    if args.command == "rollout":
        return rollout_cli.clear_rollback(args.model, args.address.rstrip("/"), args.config)
    arg = (args.version, args.weight) if args.command == "promote" else args.to
    return rollout_cli.edit_and_apply(
        args.config, args.model, args.command, arg, args.dry_run, not args.no_apply, args.address,
        getattr(args, "allow_incomplete_index", False),
        getattr(args, "url", rollout_cli.DEFAULT_URL).rstrip("/"),
    )  # fmt: skip


def _validate(path: Path) -> int:
    from servekit.local import DeployError, check_document, read_config

    try:
        doc = read_config(path)
    except DeployError as e:
        print(e, file=sys.stderr)
        return 2 if isinstance(e.__cause__, OSError) else 1
    problems = check_document(doc)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: valid")
    return 1 if problems else 0


# Ctrl-C, a supervisor's SIGTERM, or the terminal going away.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# A stop signal again within this long is the same request to stop, not a second one:
# `make serve` forwards the SIGTERM a supervisor sends to the whole process group, so
# `servekit serve` gets it twice, a moment apart.
REPEAT_S = 1.0


class _Stopper:
    """The stop signals' handler: the first raises KeyboardInterrupt in the main thread
    (it leaves the serving loop), any later one only sets `hurry` (cuts the drain
    short), and one within `REPEAT_S` of the first is ignored. A second exception from
    the handler would escape the stop itself, halfway, and leave the instance running."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.hurry = threading.Event()
        self._clock = clock
        self._first: float | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        now = self._clock()
        if self._first is None:
            self._first = now
            raise KeyboardInterrupt
        if now - self._first >= REPEAT_S:
            self.hurry.set()


def _on_stop_signals(handler: Callable[[int, FrameType | None], None]) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


# In the environment of the process `servekit serve` starts the instance from: the pid
# of that `servekit serve`, which keeps the instance running and stops it.
OWNER_ENV = "SERVEKIT_SERVE_OWNER"
# How often `servekit serve` looks for exited processes to collect while it serves.
REAP_EVERY_S = 1.0
# What starts the instance: this command again, with `OWNER_ENV` set.
STARTER_COMMAND = [sys.executable, "-m", "servekit"]


def _supervise(argv: list[str], path: Path, drain_timeout_s: float) -> int:
    """`servekit serve`: start the instance from a second process (`_serve`, a Ray
    driver that deploys the file and exits), then keep it running without Ray in this
    one until a stop signal, print its workers' output (`WorkerOutput`), and stop it
    (`local.stop_instance`). Ray's driver and its imports (about 140 MB) are gone once
    the instance serves; the instance stays this process's tree (`adopt_orphans`)."""
    from servekit import local
    from servekit.worker_output import WorkerOutput

    try:
        settle_s = _usage_settle_s(local.precheck(path))
    except local.DeployError as e:
        print(f"servekit: {e}", file=sys.stderr)
        return 1
    instance.adopt_orphans()
    stopper = _Stopper()
    _on_stop_signals(stopper)
    env = {**os.environ, OWNER_ENV: str(os.getpid())}
    starter = subprocess.Popen([*STARTER_COMMAND, *argv], env=env)
    output: WorkerOutput | None = None

    def print_output(record: instance.Record | None) -> None:
        """Print the workers' output once the starter has said where it is."""
        nonlocal output
        if output is None and record is not None and record.logs_dir:
            output = WorkerOutput(Path(record.logs_dir), sys.stderr)
            output.start()

    try:
        while starter.poll() is None:
            if output is None:
                print_output(instance.own_record())
            time.sleep(0.2)
        record = instance.own_record()
        if record is None:  # it failed, or was stopped while starting: nothing runs
            return starter.returncode
        if starter.returncode != 0:  # it was killed halfway: stop what it left
            local.stop_instance(record.token, record.processes, drain_timeout_s=0.0)
            record.remove()
            return starter.returncode
        print_output(record)
        while True:
            time.sleep(REAP_EVERY_S)
            instance.reap()
    except KeyboardInterrupt:
        pass
    if starter.poll() is None:
        # Stopped while starting: the starter stops what it started (the signal may
        # have reached this process alone).
        with contextlib.suppress(ProcessLookupError):
            starter.send_signal(signal.SIGTERM)
        while starter.poll() is None:
            with contextlib.suppress(KeyboardInterrupt):
                starter.wait()
    record = instance.own_record()
    if record is None:  # the starter stopped what it started
        if output is not None:
            output.stop()
        return starter.returncode
    print("servekit: stopping", flush=True)
    began = time.monotonic()
    if output is not None:
        output.stopping()
    local.stop_instance(record.token, record.processes, drain_timeout_s, stopper.hurry, settle_s)
    record.remove()
    if output is not None:
        output.stop()
    instance.reap()
    print(f"servekit: stopped in {time.monotonic() - began:.1f} s", flush=True)
    return 0


def _serve(
    path: Path,
    metrics_port: int,
    dashboard: bool,
    drain_timeout_s: float,
    verbose: bool = False,
    node_ip_address: str = "127.0.0.1",
    owner: int | None = None,
) -> int:
    """Start the instance of a config for `servekit serve` (`owner`, see `_supervise`):
    check the file, claim the ports, start Ray detached, deploy, say where it serves,
    and leave it to the owner (exit 0). Stopped (a stop signal) or failed while
    starting, it stops everything started here itself and removes the instance's
    record, so the owner knows nothing runs."""
    from servekit import local

    local.before_ray(node_ip_address)

    try:
        doc = local.load_config(path)
    except local.DeployError as e:
        print(f"servekit: {e}", file=sys.stderr)
        return 1
    host, port = _local_http(doc)
    settle_s = _usage_settle_s(doc)
    stopper = _Stopper()
    record = None
    _on_stop_signals(stopper)
    try:
        record = _claim(path, host, port, metrics_port, owner)
        auth_lines = _prepare_auth(doc)
        logs = None if verbose else instance.STATE_DIR / "logs"
        local.start_ray(
            metrics_port=metrics_port,
            dashboard=dashboard,
            instance_token=record.token,
            quiet_logs=logs,
            node_ip_address=node_ip_address,
            detached=True,
        )
        # Again after Ray's start-up, which installs handlers of its own.
        _on_stop_signals(stopper)
        # Ray's hook for a driver's uncaught exception first reports it to GCS, which
        # waits a minute and then aborts when GCS is gone (a group's SIGTERM stops it
        # too): any such exception is printed at once instead.
        if getattr(sys.excepthook, "__module__", "").startswith("ray."):
            sys.excepthook = sys.__excepthook__
        # Where `--address local` finds this instance, and its workers' output.
        record = record.seen(local.ray_address(), logs_dir=local.logs_dir())
        local.deploy(doc)
        record = record.seen()
        # From here on a stop is the owner's to carry out.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        print(_banner(path, f"http://{host}:{port}", metrics_port, dashboard, logs), flush=True)
        for line in auth_lines:
            print(f"  {line}", flush=True)
        local.disconnect()
        return 0
    except KeyboardInterrupt:
        print("servekit: stopping", flush=True)
        code = 0
    except (local.DeployError, instance.InstanceError, UnsafeSettings) as e:
        print(f"servekit: {e}", file=sys.stderr)
        code = 1
    # A second signal while stopping cuts the drain short (see `_Stopper`).
    began = time.monotonic()
    known = record.processes if record is not None else []
    ray_finished = local.shutdown(drain_timeout_s, stopper.hurry, known, settle_s)
    if record is not None:
        record.remove()
        print(f"servekit: stopped in {time.monotonic() - began:.1f} s", flush=True)
    if not ray_finished:
        # Ray's shutdown is still waiting for processes that are gone (the signal
        # reached them too); at interpreter exit it would wait again. Reap them.
        instance.reap()
        sys.stderr.flush()
        os._exit(code)
    return code


# Serve's own default host is 0.0.0.0 (every interface): a local instance keeps to
# this machine unless the file says otherwise.
LOCAL_HOST = "127.0.0.1"


def _local_http(doc: dict[str, Any]) -> tuple[str, int]:
    """The host and port a local instance serves HTTP on; the host is written into
    `doc`'s `http_options` (127.0.0.1) when the file leaves it out."""
    http = dict(doc.get("http_options") or {})
    if http.get("host") is None:
        http["host"] = LOCAL_HOST
    doc["http_options"] = http
    return str(http["host"]), int(http.get("port", 8000))


def _usage_settle_s(doc: dict[str, Any]) -> float:
    """How long servekit's replicas need after the last request to write their usage
    counts: one flush period (and a little), when metering is on. Never raises (the
    stop it times must happen): unreadable `args.auth` counts as the default."""
    from pydantic import ValidationError

    from configs.schema import AuthSettings
    from configs.validate import IMPORT_PATH

    longest = 0.0
    for app in doc.get("applications") or []:
        if not isinstance(app, dict) or app.get("import_path") != IMPORT_PATH:
            continue
        args = app.get("args")
        try:
            auth = AuthSettings.model_validate(
                (args.get("auth") if isinstance(args, dict) else None) or {}
            )
        except ValidationError:
            auth = AuthSettings()
        if auth.enabled:
            longest = max(longest, auth.usage_flush_s + 0.3)
    return longest


def _prepare_auth(doc: dict[str, Any]) -> list[str]:
    """Development credentials and tenant for a local instance (see credentials.py)."""
    from servekit import credentials

    enabled = True
    for app in doc.get("applications") or []:
        auth = (app.get("args") or {}).get("auth") or {}
        enabled = enabled and bool(auth.get("enabled", True))
    return credentials.prepare_local(enabled)


def _claim(
    path: Path, host: str, port: int, metrics_port: int, owner: int | None = None
) -> instance.Record:
    """Stop what earlier instances of this checkout left running, check that the
    ports are free (and move Serve's fixed ones, such as HAProxy's stats and metrics
    ports, off those another instance holds), and record this instance before it
    starts anything."""
    for line in instance.clean_up_earlier(port):
        print(f"servekit: {line}", flush=True)
    instance.check_port(host, port, f"http_options.port of {path}")
    instance.check_port("0.0.0.0", metrics_port, "--metrics-port")
    for line in instance.claim_serve_ports():
        print(f"servekit: {line}", flush=True)
    return instance.record_this(instance.new_token(), port, path, owner)


def _banner(path: Path, base: str, metrics_port: int, dashboard: bool, logs: Path | None) -> str:
    from servekit import local

    if logs is None:
        logs_lines = "  logs     on this console (--verbose)\n"
    else:
        shown = _relative(logs)
        logs_lines = (
            f"  log      {shown / local.LOG_FILE} (JSON: every request; events with "
            "tracebacks)\n"
            f"  ray logs {shown / local.RAY_LOGS_LINK}/ (Serve's and HAProxy's in serve/; "
            "--verbose shows them here)\n"
        )
    return (
        f"servekit: serving {path} at {base}\n"
        f"  docs     {base}/docs\n"
        f"  ready    {base}/v2/health/ready\n"
        f"  metrics  http://127.0.0.1:{metrics_port}/metrics\n"
        f"  ray      {local.ray_address()}\n"
        + ("  dashboard http://127.0.0.1:8265\n" if dashboard else "")
        + logs_lines
        + "Apply edits to the file: servekit promote|rollback, or serve_config.yaml\n"
        "changes with `servekit apply`. Ctrl-C or SIGTERM stops everything started here."
    )


def _relative(path: Path) -> Path:
    """`path` relative to the working folder when it is under it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
