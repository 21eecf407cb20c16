"""The `servekit` command: validate and serve a `serve_config.yaml`."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import yaml


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
    check = sub.add_parser("validate", help="check a config without starting anything")
    check.add_argument("config", type=Path, nargs="?", default=Path("serve_config.yaml"))
    _rollout_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "serve":
        return _serve(args.config, args.metrics_port, args.dashboard)
    return _run_rollout_command(args)


ADDRESS_HELP = (
    "where to apply: 'local' (the instance `servekit serve` runs here; default), "
    "a GCS address host:port, or a Ray dashboard URL http://host:8265 (clusters)"
)


def _rollout_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from servekit.rollout_cli import DEFAULT_ADDRESS, DEFAULT_URL

    for name, text in (
        ("promote", "give a version a traffic weight, edit the file, show the diff, apply it"),
        ("rollback", "send all of a model's traffic back to one version and apply it"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("model")
        if name == "promote":
            cmd.add_argument("version")
            cmd.add_argument("--weight", type=int, required=True, help="percent, 0..100")
        else:
            cmd.add_argument("--to", help="the version to keep (default: the primary)")
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


def _run_rollout_command(args: argparse.Namespace) -> int:
    from servekit import rollout_cli

    # Before Ray is imported: it reads its auth mode once.
    rollout_cli.token_mode_if_token()
    if args.command == "status":
        return rollout_cli.status(args.url.rstrip("/"), args.address.rstrip("/"))
    if args.command == "apply":
        return rollout_cli.deploy(args.config, args.address.rstrip("/"))
    arg = (args.version, args.weight) if args.command == "promote" else args.to
    return rollout_cli.edit_and_apply(
        args.config, args.model, args.command, arg, args.dry_run, not args.no_apply, args.address
    )


def _validate(path: Path) -> int:
    from servekit.local import check_document

    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        print(f"{path}: no such file", file=sys.stderr)
        return 2
    except yaml.YAMLError:
        print(f"{path}: not valid YAML", file=sys.stderr)
        return 1
    problems = check_document(doc)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: valid")
    return 1 if problems else 0


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _serve(path: Path, metrics_port: int, dashboard: bool) -> int:
    from servekit import local

    try:
        doc = local.load_config(path)
    except (local.DeployError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        return 1
    http = doc.get("http_options") or {}
    base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    try:
        local.start_ray(metrics_port=metrics_port, dashboard=dashboard)
        # After Ray's own start-up, which installs handlers of its own.
        signal.signal(signal.SIGTERM, _stop)
        local.deploy(doc)
        print(
            f"servekit: serving {path} at {base}\n"
            f"  docs     {base}/docs\n"
            f"  ready    {base}/v2/health/ready\n"
            f"  metrics  http://127.0.0.1:{metrics_port}/metrics\n"
            f"  ray      {local.ray_address()}\n"
            + ("  dashboard http://127.0.0.1:8265\n" if dashboard else "")
            + "Apply edits to the file: servekit promote|rollback, or serve_config.yaml\n"
            "changes with `servekit apply`. Ctrl-C or SIGTERM stops everything started here.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("servekit: stopping", flush=True)
        return 0
    except local.DeployError as e:
        print(f"servekit: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        local.shutdown()
