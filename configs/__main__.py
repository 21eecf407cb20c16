"""`python -m configs validate FILE`: check a config without starting anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from configs.validate import validate_file


def main(argv: list[str] | None = None) -> int:
    """Print every problem with its location; exit 1 when there is any."""
    parser = argparse.ArgumentParser(prog="python -m configs")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="validate a serve_config.yaml")
    check.add_argument("file", type=Path, nargs="?", default=Path("serve_config.yaml"))
    check.add_argument(
        "--no-artifact-check", action="store_true", help="skip local artifact file checks"
    )
    args = parser.parse_args(argv)
    report = validate_file(args.file, check_artifacts=not args.no_artifact_check)
    if report.ok:
        print(f"{args.file}: valid")
        return 0
    for problem in report.problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
