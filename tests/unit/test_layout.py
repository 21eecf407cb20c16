"""The layout the code promises: a small ingress, routing and the lower layers that
never import Ray, and `models/` and `configs/` that know nothing of the deployments."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

MAX_INGRESS_LINES = 250


def _modules(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO_ROOT)) for p in paths]


def test_the_ingress_stays_small() -> None:
    lines = len((REPO_ROOT / "deployments" / "ingress.py").read_text().splitlines())
    assert lines < MAX_INGRESS_LINES, f"deployments/ingress.py has {lines} lines"


ROUTING = _modules("deployments/routing")


@pytest.mark.parametrize("path", ROUTING, ids=_ids(ROUTING))
def test_routing_never_imports_ray(path: Path) -> None:
    assert "ray" not in _top(_imports(path))


LOWER = _modules("models") + _modules("configs")


@pytest.mark.parametrize("path", LOWER, ids=_ids(LOWER))
def test_models_and_configs_import_neither_ray_nor_deployments(path: Path) -> None:
    assert not _top(_imports(path)) & {"ray", "deployments"}


def test_the_packages_were_found() -> None:
    assert len(ROUTING) >= 6
    assert {p.name for p in LOWER} >= {"schema.py", "validate.py", "runtime.py", "text.py"}


def _loaded_after(statement: str) -> set[str]:
    """Top-level packages in `sys.modules` after `statement`, in a fresh interpreter."""
    code = f"{statement}; import sys; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_importing_the_router_loads_no_ray() -> None:
    loaded = _loaded_after(
        "import deployments.routing.router, deployments.routing.canary, "
        "deployments.routing.shadow, deployments.routing.traffic"
    )
    assert "deployments" in loaded
    assert "ray" not in loaded


def test_importing_models_and_configs_loads_neither_ray_nor_deployments() -> None:
    loaded = _loaded_after(
        "import models, models.build, models.package, configs.schema, configs.validate, "
        "configs.settings, configs.cluster"
    )
    assert {"models", "configs"} <= loaded
    assert not loaded & {"ray", "deployments"}


STORES = _modules("stores")
NO_HTTP_NO_RAY = {"ray", "deployments", "fastapi", "starlette", "servekit"}


@pytest.mark.parametrize("path", STORES, ids=_ids(STORES))
def test_stores_know_nothing_of_ray_http_or_the_deployments(path: Path) -> None:
    assert not _top(_imports(path)) & NO_HTTP_NO_RAY


TENANCY = _modules("deployments/tenancy")


@pytest.mark.parametrize("path", TENANCY, ids=_ids(TENANCY))
def test_tenancy_is_plain_python(path: Path) -> None:
    assert not _top(_imports(path)) & {"ray", "fastapi", "starlette"}


def test_importing_stores_and_tenancy_loads_no_ray() -> None:
    loaded = _loaded_after(
        "import stores.tenants, stores.registry_sql, stores.ratelimit_embedded, "
        "stores.ratelimit_redis, stores.secrets, deployments.tenancy.access"
    )
    assert {"stores", "deployments"} <= loaded
    assert not loaded & {"ray", "fastapi", "starlette"}
