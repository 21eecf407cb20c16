"""The Makefile's bootstrap, run on a copy in a scratch folder (its installs replaced by
a line naming the Python that would run them): a `.venv` that is not a Python 3.11 venv
with pip is made again, a missing Python 3.11 stops make at once with one line saying
what to install, and so does a missing Node.js 20 with npm for `make sdk-ts`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="needs make")


def _scratch(tmp_path: Path) -> Path:
    """The Makefile and the files its bootstrap depends on; installs only echoed."""
    text = (REPO_ROOT / "Makefile").read_text()
    text = re.sub(r"^\t\$\(PY\) -m pip install .*$", "\t@echo would install with $$($(PY) -V)",
                  text, flags=re.MULTILINE)  # fmt: skip
    text = re.sub(r"^\tcd \$\(SDK_TS\) && npm ci .*$",
                  "\t@echo would run npm ci && mkdir -p $(SDK_TS)/node_modules", text,
                  flags=re.MULTILINE)  # fmt: skip
    (tmp_path / "Makefile").write_text(text)
    for name in ("pyproject.toml", "sdk/python/pyproject.toml", "sdk/typescript/package.json",
                 "sdk/typescript/package-lock.json"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return tmp_path


def _make(folder: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path if path is not None else os.environ["PATH"]}
    return subprocess.run([str(MAKE), "-s", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def _fake_python(folder: Path, version: str) -> Path:
    """A `python` that is `version` and fails whatever it is asked to run."""
    fake = folder / "fake-python"
    fake.write_text(f'#!/bin/sh\n[ "$1" = -V ] && echo "Python {version}" && exit 0\nexit 1\n')
    fake.chmod(0o755)
    return fake


def test_without_python_311_make_stops_saying_what_to_install(tmp_path: Path) -> None:
    folder = _scratch(tmp_path)
    fake = _fake_python(folder, "3.12.1")
    done = _make(folder, "install", f"PYTHON_BOOT={fake}")
    assert done.returncode != 0
    line = done.stderr.splitlines()[0]
    assert line.startswith(f"servekit needs Python 3.11 to create .venv: {fake} is Python 3.12.1;")
    assert "apt-get install python3.11 python3.11-venv" in line
    assert not (folder / ".venv").exists()
    done = _make(folder, "install", "PYTHON_BOOT=")
    assert done.returncode != 0
    assert "no python3.11 or python3 is on PATH" in done.stderr


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="needs Python 3.11 to make a venv")
def test_a_venv_without_pip_is_made_again(tmp_path: Path) -> None:
    folder = _scratch(tmp_path)
    # What `python3.11 -m venv` leaves when ensurepip is missing: bin/python, no pip.
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", ".venv"], cwd=folder,
                   check=True)  # fmt: skip
    done = _make(folder, "install", f"PYTHON_BOOT={sys._base_executable}")
    assert done.returncode == 0, done.stderr
    assert ".venv is not a working Python 3.11 environment with pip: making it again" in done.stdout
    assert "would install with Python 3.11" in done.stdout
    check = [str(folder / ".venv/bin/python"), "-c", "import pip"]
    assert subprocess.run(check, check=False).returncode == 0
    again = _make(folder, "install", f"PYTHON_BOOT={sys._base_executable}")
    assert again.returncode == 0
    assert again.stdout == ""  # a working venv, installed: nothing to do


def test_sdk_ts_without_npm_stops_with_one_line(tmp_path: Path) -> None:
    folder = _scratch(tmp_path)
    empty = folder / "bin"
    empty.mkdir()
    done = _make(folder, "sdk-ts", path=str(empty))
    assert done.returncode != 0
    first = done.stderr.splitlines()[0]
    assert first.startswith("make sdk-ts: the TypeScript SDK (and make test) needs Node.js 20 or ")
    assert first.endswith("found node none, npm none")
    (empty / "node").write_text("#!/bin/sh\necho v18.20.4\n")
    (empty / "npm").write_text("#!/bin/sh\n")
    for tool in ("node", "npm"):
        (empty / tool).chmod(0o755)
    done = _make(folder, "sdk-ts", path=str(empty))
    assert done.returncode != 0
    assert done.stderr.splitlines()[0].endswith("found node v18.20.4, npm yes")
    (empty / "node").write_text("#!/bin/sh\necho v20.11.0\n")
    for tool in ("mkdir", "touch"):  # what the rest of the recipe runs
        (empty / tool).symlink_to(str(shutil.which(tool)))
    done = _make(folder, "sdk-ts", path=str(empty))
    assert done.returncode == 0, done.stderr
    assert "would run npm ci" in done.stdout
