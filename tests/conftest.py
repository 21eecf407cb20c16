"""Shared test setup: quiet, offline environment and the example artifact store."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test configs use test-only fault injection; production processes never set this.
os.environ.setdefault("SERVEKIT_ALLOW_FAULT_INJECTION", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO_ROOT / "artifacts"

# Figures tests measure (parity minima, counts) are printed at the end of the run.
REPORT: list[str] = []


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def example_store() -> Path:
    """The local artifact store with the example versions built (idempotent)."""
    from models.build import build

    build(ARTIFACTS_DIR)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def manifest(example_store: Path) -> dict[str, dict[str, str]]:
    """Version name -> manifest entry of the example model."""
    import json

    data = json.loads((example_store / "manifest.json").read_text())
    versions: dict[str, dict[str, str]] = data["models"]["minilm"]["versions"]
    return versions


@pytest.fixture
def report() -> list[str]:
    """Lines appended here are printed in the test summary."""
    return REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures that tests measured."""
    if REPORT:
        terminalreporter.section("servekit measurements")
        for line in REPORT:
            terminalreporter.write_line(line)
