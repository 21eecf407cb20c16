"""The `servekit` command."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `servekit` command."""
    parser = argparse.ArgumentParser(prog="servekit")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a config on a local Ray instance")
    serve.add_argument("config", nargs="?", default="serve_config.yaml")
    args = parser.parse_args(argv)
    if args.command == "serve":
        print("servekit: artifacts are built; no application is defined yet.")
    return 0
