"""The generic top-level names (`models`, `configs`) must be this project's packages."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("servekit", "models", "configs", "deployments")


def test_declared_packages_are_the_repository_packages() -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    on_disk = {
        p.parent.name
        for p in REPO_ROOT.glob("*/__init__.py")
        if p.parent.name not in ("tests", "bench", "cluster")
    }
    assert set(declared) == on_disk == set(PACKAGES)


@pytest.mark.parametrize("name", PACKAGES)
def test_installed_import_resolves_to_this_repository(name: str, tmp_path: Path) -> None:
    # From an unrelated directory, so the import goes through the installation,
    # not through the current directory on sys.path.
    out = subprocess.run(
        [sys.executable, "-c", f"import {name}; print({name}.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).resolve() == REPO_ROOT / name / "__init__.py"


def test_models_layer_never_imports_ray() -> None:
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "models").rglob("*.py")
        if any(
            line.strip().startswith(("import ray", "from ray"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
