"""The TypeScript SDK (sdk/typescript) as a caller uses it: its `node --test` files run
against the session's live service, with the service's URL, the test tenant's key and
the operator credential in the environment.

The package's development dependencies come from `make test` (`make sdk-ts`); when
they are missing or older than its lock file they are installed here too (`npm ci`).
The package is built once per session. A node test that skips (a service variable not
set) fails here: every one must run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, operator_headers, tenant_api_key
from tests.integration.conftest import Service

pytestmark = [pytest.mark.integration]

SDK = REPO_ROOT / "sdk" / "typescript"
NODE_TESTS = sorted((SDK / "test").glob("*.test.mjs"))
NPM_TIMEOUT_S = 300
NODE_TIMEOUT_S = 400


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout_s: float = NPM_TIMEOUT_S
) -> str:
    """Run a command in the package's folder; its output, or the test fails with it."""
    done = subprocess.run(
        args, cwd=SDK, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output[-8000:]}"
    return output


def _installed() -> bool:
    """Whether node_modules is what package-lock.json says (npm ci leaves this file)."""
    marker = SDK / "node_modules" / ".package-lock.json"
    lock = SDK / "package-lock.json"
    return marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime


@pytest.fixture(scope="module")
def built_sdk() -> Path:
    """The package with its development dependencies installed and dist/ built."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed for the TypeScript SDK's tests")
    if not _installed():
        _run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"])
    _run(["npm", "run", "build"])
    return SDK


def test_the_node_tests_were_found() -> None:
    names = {path.name for path in NODE_TESTS}
    assert names >= {"service.test.mjs", "retry.test.mjs", "package.test.mjs", "generated.test.mjs"}


@pytest.mark.parametrize("path", NODE_TESTS, ids=[p.name for p in NODE_TESTS])
def test_typescript_sdk(built_sdk: Path, service: Service, path: Path) -> None:
    env = {
        **os.environ,
        "SERVEKIT_TEST_URL": service.base_url,
        "SERVEKIT_TEST_KEY": tenant_api_key(),
        "SERVEKIT_TEST_ADMIN_KEY": operator_headers()["Authorization"].removeprefix("Bearer "),
    }
    for name in ("SERVEKIT_API_KEY", "SERVEKIT_URL", "NODE_OPTIONS"):
        env.pop(name, None)
    output = _run(
        ["node", "--test", "--test-reporter=tap", str(path.relative_to(SDK))],
        env,
        NODE_TIMEOUT_S,
    )
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    assert passed is not None, output[-8000:]
    assert int(passed.group(1)) > 0, output[-8000:]
    assert re.search(r"^# fail 0$", output, re.MULTILINE), output[-8000:]
    assert "# SKIP" not in output, f"a node test skipped:\n{output[-8000:]}"
