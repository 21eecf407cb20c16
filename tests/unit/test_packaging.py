"""Packaging: the generic top-level names (`models`, `configs`) are this project's
packages, and the serving image's CPU and GPU variants install what pyproject.toml pins."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("servekit", "models", "configs", "deployments", "stores")


def test_declared_packages_are_the_repository_packages() -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    on_disk = {
        p.parent.name
        for p in REPO_ROOT.glob("*/__init__.py")
        if p.parent.name not in ("tests", "bench", "cluster")
    }
    top = {p for p in declared if "." not in p}
    assert all(p.split(".")[0] in top for p in declared)
    assert top == on_disk == set(PACKAGES)
    # setuptools installs only the packages listed, not their sub-packages: a package
    # left out is missing from the wheel (and so from the serving image).
    importable = {
        ".".join(p.parent.relative_to(REPO_ROOT).parts)
        for name in PACKAGES
        for p in (REPO_ROOT / name).rglob("__init__.py")
    }
    assert sorted(importable - set(declared)) == []


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


def _project() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _pin(requirements: list[str], name: str) -> str:
    (pin,) = (r for r in requirements if re.match(rf"{re.escape(name)}\s*==", r))
    return pin.split("==")[1].strip()


def _variants(dockerfile: str) -> dict[str, tuple[str, str]]:
    """VARIANT -> (torch index, what pip installs), from the Dockerfile's case."""
    branches = re.findall(
        r"^\s*(\w+)\) torch_index=(\S+); project=(\"[^\"]+\"|\S+) ;;", dockerfile, re.M
    )
    return {name: (index, project.strip('"')) for name, index, project in branches}


def test_gpu_extra_is_the_cuda_build_of_the_pinned_runtime() -> None:
    project = _project()
    gpu = project["optional-dependencies"]["gpu"]
    ort_cpu = _pin(project["dependencies"], "onnxruntime")
    ort_gpu = _pin(gpu, "onnxruntime-gpu")
    # Serving runs the artifacts the CPU toolchain built: the same major release line.
    assert ort_gpu.split(".")[0] == ort_cpu.split(".")[0]
    # torch is not in the extra: the CUDA build comes from PyTorch's CUDA index.
    assert not any(r.startswith("torch") for r in gpu)


def test_dockerfile_builds_each_variant_from_its_own_torch_index() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    project = _project()
    ray = _pin(project["dependencies"], "ray[serve]")
    torch = _pin(project["dependencies"], "torch")
    assert "ARG VARIANT=cpu" in dockerfile
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray}-py311-cpu" in dockerfile
    assert f"ARG RAY_GPU_IMAGE=rayproject/ray:{ray}-py311-gpu" in dockerfile
    assert re.search(r"^FROM \$\{RAY_IMAGE\} AS base-cpu$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{RAY_GPU_IMAGE\} AS base-gpu$", dockerfile, re.M)
    assert re.search(r"^FROM base-\$\{VARIANT\}$", dockerfile, re.M)
    variants = _variants(dockerfile)
    assert variants == {
        "cpu": ("https://download.pytorch.org/whl/cpu", "."),
        "gpu": (variants["gpu"][0], ".[gpu]"),
    }
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", variants["gpu"][0])
    assert f'pip install --index-url "${{torch_index}}" "torch=={torch}"' in dockerfile


def test_dockerfile_gpu_variant_keeps_only_onnxruntime_gpu() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    install = dockerfile.index('pip install "${project}"')
    uninstall = dockerfile.index("pip uninstall -y onnxruntime onnxruntime-gpu")
    reinstall = dockerfile.index('pip install --no-deps "onnxruntime-gpu==${ort_gpu}"')
    check = dockerfile.index("'CUDAExecutionProvider' in o.get_available_providers()")
    # Both packages write the `onnxruntime` module; removing the CPU one after the GPU one
    # was installed would delete the GPU build's files, so: install, drop both, put back.
    assert install < uninstall < reinstall < check
    assert 'if [ "${VARIANT}" = gpu ]' in dockerfile[install:uninstall]


def _dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `**` any number of folders, `*` and
    `?` within one path element."""
    out = ""
    for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(out)


def _docker_context_excludes(path: str, patterns: list[str]) -> bool:
    """Whether `docker build .` leaves a file out: a pattern matches the path or a folder
    above it, and the last matching pattern decides (`!` puts back)."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        regex = _pattern_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not pattern.startswith("!")
    return excluded


def test_docker_context_keeps_what_the_dockerfile_copies() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    sources = [
        source
        for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile, re.M)
        for source in line.split()
    ]
    assert {"pyproject.toml", "README.md", "serve_config.yaml", *PACKAGES} <= set(sources)
    tracked = subprocess.run(
        ["git", "ls-files", "--", *sources],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(tracked) > len(sources)
    patterns = _dockerignore_patterns()
    assert [f for f in tracked if _docker_context_excludes(f, patterns)] == []


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "artifacts/minilm/v1.tar",
        ".servekit/dev-api-key",
        "bench/results/latest.json",
        "sdk/typescript/node_modules/typescript/package.json",
        "deployments/__pycache__/app.cpython-311.pyc",
        "tests/unit/test_packaging.py",
        ".serve_config.yaml.lock",
    ],
)
def test_docker_context_leaves_out_local_state_and_tooling(path: str) -> None:
    assert _docker_context_excludes(path, _dockerignore_patterns())


def test_every_data_file_of_the_packages_ships_with_them() -> None:
    # What the packages read beside their modules at run time (feature definitions, the
    # dashboard's files, the migration template) must be in an installed copy too.
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tracked = subprocess.run(
        ["git", "ls-files", "--", *PACKAGES],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    data = [Path(f) for f in tracked if not f.endswith(".py")]
    assert Path("configs/features.yaml") in data
    missing = []
    for path in data:
        owner = max(
            (p for p in setuptools["packages"] if path.is_relative_to(p.replace(".", "/"))),
            key=len,
        )
        inside = path.relative_to(owner.replace(".", "/")).as_posix()
        if not any(fnmatch.fnmatch(inside, g) for g in setuptools["package-data"].get(owner, [])):
            missing.append(str(path))
    assert missing == []
