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
    check = sub.add_parser("validate", help="check a config without starting anything")
    check.add_argument("config", type=Path, nargs="?", default=Path("serve_config.yaml"))
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args.config)
    return _serve(args.config, args.metrics_port)


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


def _serve(path: Path, metrics_port: int) -> int:
    from servekit import local

    try:
        doc = local.load_config(path)
    except (local.DeployError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        return 1
    http = doc.get("http_options") or {}
    base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    try:
        local.start_ray(metrics_port=metrics_port)
        # After Ray's own start-up, which installs handlers of its own.
        signal.signal(signal.SIGTERM, _stop)
        local.deploy(doc)
        print(
            f"servekit: serving {path} at {base}\n"
            f"  docs     {base}/docs\n"
            f"  ready    {base}/v2/health/ready\n"
            f"  metrics  http://127.0.0.1:{metrics_port}/metrics\n"
            "Ctrl-C or SIGTERM stops everything started here.",
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
