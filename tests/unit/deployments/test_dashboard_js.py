"""The dashboard's arithmetic (`deployments/http/static/metrics.js`: snapshots in, plotted
rates and quantiles out) under Node's own test runner, and the page's files served."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from deployments.http.dashboard import PAGE_FILES, STATIC_DIR
from tests.conftest import REPO_ROOT

TESTS = REPO_ROOT / "tests" / "unit" / "deployments" / "dashboard_metrics.test.js"


@pytest.mark.skipif(shutil.which("node") is None, reason="the page's scripts need Node.js")
def test_the_dashboards_arithmetic() -> None:
    done = subprocess.run(
        ["node", "--test", str(TESTS)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_every_file_the_page_loads_is_served() -> None:
    page = (STATIC_DIR / "dashboard.html").read_text()
    loaded = set(re.findall(r'(?:src|href)="dashboard/([^"]+)"', page))
    assert "metrics.js" in loaded
    for name in loaded:
        assert name in PAGE_FILES, name
        assert (STATIC_DIR / PAGE_FILES[name][0]).is_file(), name
