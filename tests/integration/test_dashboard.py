"""The dashboard in a real browser (Debian's headless Chromium, driven by Selenium): the
page loads without a key and asks for one, refuses a wrong one, shows the current
weights with the operator's, follows a `servekit promote` at its next refresh, and its
plots draw once traffic flows. A screenshot is saved (to `SERVEKIT_DASHBOARD_SCREENSHOT`
when set: `docs/dashboard.png` is made that way)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import TEST_SECRETS, TEST_TENANT, operator_headers
from tests.integration.conftest import Service, wait_ready

pytestmark = pytest.mark.integration

KEY_ITEM = "servekit.dashboard.key"  # where the page keeps the key (sessionStorage)
OPERATOR = TEST_SECRETS["SERVEKIT_ADMIN_TOKEN"]
# The page's first series colours (dashboard.js), in order.
SERIES_COLOURS = [(0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28), (0x2C, 0xA0, 0x2C), (0xFF, 0x7F, 0x0E)]


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian's packages (`scripts/install-servers.sh`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("needs chromium and chromium-driver: bash scripts/install-servers.sh (root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2300", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=DriverService(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


ITEMS = [
    {"id": f"dash-{n}", "text": {"title": f"{word} lamp {n}"}, "attributes": {"n": n}}
    for n, word in enumerate(["desk", "floor", "reading", "wall", "table", "clip"] * 2)
]


class Traffic:
    """Embeddings, searches and recommendations on a small catalog, a few a second, in a
    thread, while a test runs."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.codes: list[int] = []

    def _run(self) -> None:
        with self.service.client() as client:
            put = client.put("/v1/catalogs/dashboard/items", json={"items": ITEMS})
            self.codes.append(put.status_code)
            i = 0
            while not self.stopped.is_set():
                i += 1
                for model in ("minilm", "minilm-inline"):
                    body = {"model": model, "input": [f"dashboard {i}", "dashboard"]}
                    self.codes.append(client.post("/v1/embeddings", json=body).status_code)
                search = {"catalog": "dashboard", "query": ITEMS[i % 6]["text"]["title"]}
                self.codes.append(client.post("/v1/search", json=search).status_code)
                wanted = {"catalog": "dashboard", "user": f"dashboard-user-{i % 3}"}
                self.codes.append(client.post("/v1/recommendations", json=wanted).status_code)
                self.stopped.wait(0.3)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 120) -> Any:
    """Poll `check()` until it is truthy; fail naming `what` (and the last value)."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout_s} s (last: {value!r})")


def page_weights(browser: Any, model: str) -> dict[str, int]:
    """The weights the page shows for `model`'s versions."""
    rows = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map("
        "r => [r.dataset.version, r.querySelector('.weight-value').textContent])",
        f'.model[data-model="{model}"] tr[data-version]',
    )
    return {version: int(weight) for version, weight in rows}


def served_weights(service: Service, model: str) -> dict[str, int]:
    """The weights the service says it applies."""
    with service.client(headers=operator_headers()) as client:
        detail = client.get(f"/v1/models/{model}").json()
    return {v["name"]: v["weight"] for v in detail["versions"]}


def refreshes(browser: Any) -> int:
    return int(browser.execute_script("return document.body.dataset.refreshes"))


def plot(browser: Any, name: str) -> dict[str, str]:
    figure = browser.find_element("id", f"plot-{name}")
    return {k: figure.get_attribute(f"data-{k}") or "" for k in ("points", "max", "series")}


def canvas_colours(browser: Any, name: str) -> dict[tuple[int, ...], int]:
    """The opaque colours on the plot's canvas, with their pixel counts."""
    script = """
        const canvas = document.querySelector(`#plot-${arguments[0]} canvas`);
        if (!canvas) return [];
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const counts = {};
        for (let i = 0; i < data.length; i += 4) {
            if (data[i + 3] > 200) {
                const key = `${data[i]},${data[i + 1]},${data[i + 2]}`;
                counts[key] = (counts[key] || 0) + 1;
            }
        }
        return Object.entries(counts);"""
    pairs = browser.execute_script(script, name)
    return {tuple(int(c) for c in key.split(",")): int(n) for key, n in pairs}


def near(colours: dict[tuple[int, ...], int], rgb: tuple[int, int, int]) -> int:
    """Pixels within a small distance of `rgb` (antialiasing shifts a few)."""
    return sum(
        n for c, n in colours.items() if all(abs(a - b) < 40 for a, b in zip(c, rgb, strict=True))
    )


def log_in(browser: Any, service: Service, key: str) -> None:
    browser.get(f"{service.base_url}/dashboard")
    browser.find_element("id", "key").send_keys(key)
    browser.find_element("css selector", "#login button[type=submit]").click()


def test_the_page_and_its_data_routes(service: Service) -> None:
    page = httpx.get(f"{service.base_url}/dashboard", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{service.base_url}/dashboard/uPlot.iife.min.js", timeout=10)
    assert script.status_code == 200
    assert "uPlot" in script.text
    assert httpx.get(f"{service.base_url}/dashboard/secrets.txt", timeout=10).status_code == 404
    for route in ("state", "metrics"):
        url = f"{service.base_url}/admin/v1/dashboard/{route}"
        assert httpx.get(url, timeout=10).status_code == 401
        r = httpx.get(url, headers=operator_headers(), timeout=30)
        assert r.status_code == 200, r.text
    state = httpx.get(
        f"{service.base_url}/admin/v1/dashboard/state", headers=operator_headers(), timeout=30
    ).json()
    cards = {m["id"]: m for m in state["models"]}
    weights = {v["name"]: v["weight"] for v in cards["minilm"]["versions"]}
    assert weights == served_weights(service, "minilm")
    deployments = {d["name"]: d for d in state["deployments"]}
    assert deployments["Ingress"]["running"] >= 1
    assert deployments["minilm-v1"]["running"] >= 1


def test_a_tenant_admin_sees_its_own_tenant_only(service: Service) -> None:
    """The test tenant's key has the admin scope: its own usage and tenant series only."""
    with service.client() as client:
        assert client.post("/v1/embeddings", json={"model": "minilm", "input": "x"}).is_success
        state = client.get("/admin/v1/dashboard/state").json()
        metrics = client.get("/admin/v1/dashboard/metrics").json()
    assert [u["tenant_id"] for u in state["usage"]] == [TEST_TENANT]
    tenants = {
        c["labels"]["tenant"]
        for c in metrics["counters"]
        if c["name"] == "servekit_tenant_requests_total"
    }
    assert tenants <= {TEST_TENANT}  # never `other` (every other tenant) nor another's
    assert metrics["nodes"] == 1
    assert len(metrics["node_set"]) == 16


def test_a_wrong_key_is_refused_and_forgotten(service: Service, browser: Any) -> None:
    log_in(browser, service, "sk-not-a-key")
    wait_for(lambda: browser.find_element("id", "login-error").text, "the refusal shown")
    assert "refused" in browser.find_element("id", "login-error").text
    assert browser.execute_script(f"return sessionStorage.getItem('{KEY_ITEM}')") is None
    assert browser.find_element("id", "main").get_attribute("hidden") is not None


def test_weights_promote_and_plots(service: Service, browser: Any, tmp_path: Path) -> None:
    import ray

    original = copy.deepcopy(service.config)
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(service.config, sort_keys=False))
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "SERVEKIT_URL": service.base_url, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        with Traffic(service) as traffic:
            log_in(browser, service, OPERATOR)
            assert OPERATOR not in browser.current_url
            stored = browser.execute_script(f"return sessionStorage.getItem('{KEY_ITEM}')")
            assert stored == OPERATOR
            assert browser.execute_script("return localStorage.length") == 0

            # The current weights.
            before = served_weights(service, "minilm")
            wait_for(lambda: page_weights(browser, "minilm") == before, "the weights shown")
            assert before["v2"] != 50

            # A promote is shown at the page's next refresh after it returned.
            out = subprocess.run(
                [sys.executable, "-m", "servekit", "promote", "minilm", "v2", "--weight", "50",
                 "--allow-incomplete-index", "--config", str(config), "--address", address],
                capture_output=True, text=True, env=env, check=False, timeout=300,
            )  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
            promoted = served_weights(service, "minilm")
            assert promoted["v1"] == 50
            assert promoted["v2"] == 50
            seen = refreshes(browser)
            wait_for(lambda: refreshes(browser) >= seen + 2, "two refreshes")
            assert page_weights(browser, "minilm") == promoted

            # The plots draw: rates, latency, cache and tenants from the nodes' metrics.
            def drawn() -> bool:
                rate, p95, search = (plot(browser, n) for n in ("rate", "p95", "search"))
                return (
                    "minilm/v1" in rate["series"]
                    and float(rate["max"] or 0) > 0
                    and float(p95["max"] or 0) > 0
                    and float(search["max"] or 0) > 0
                    and int(plot(browser, "tenants")["points"] or 0) > 0
                )

            wait_for(drawn, "the plots drawn", timeout_s=180)
            screenshot = os.environ.get("SERVEKIT_DASHBOARD_SCREENSHOT")
            if screenshot:  # for the README: a minute of points first
                wait_for(lambda: int(plot(browser, "rate")["points"]) >= 40, "a minute of points")
            shot = Path(screenshot or tmp_path / "dashboard.png")
            assert browser.save_screenshot(str(shot))
            # The series' lines are on the canvas (one may hide another: any of them).
            colours = canvas_colours(browser, "rate")
            series = json.loads(plot(browser, "rate")["series"])
            drawn_pixels = sum(near(colours, rgb) for rgb in SERIES_COLOURS[: len(series)])
            top = sorted(colours.items(), key=lambda item: -item[1])[:8]
            assert drawn_pixels > 50, (plot(browser, "rate"), top, shot)
            assert int(plot(browser, "cache")["points"] or 0) > 0
            assert 200 in traffic.codes
    finally:
        service.redeploy(original)
        wait_ready(service)
