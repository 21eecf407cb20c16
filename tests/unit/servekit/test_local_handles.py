"""`local.close_handles`, which every stop of a driver's instance runs first: it closes
the driver's cached deployment handles, and neither a handle that fails to close nor
one that hangs holds the stop up. (That an unclosed handle would start a new Ray
instance after the stop is shown end to end in tests/integration/test_driver_shutdown.py.)"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from ray.serve import context

from servekit import local


class Client:
    """Stands in for Serve's client in `context._global_client`: what closing does."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome
        self.calls = 0
        self.release = threading.Event()

    def shutdown_cached_handles(self) -> None:
        self.calls += 1
        if self.outcome == "raises":
            raise RuntimeError("router loop gone")
        if self.outcome == "hangs":
            self.release.wait(30)


@pytest.fixture
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    fake = Client(request.param)
    monkeypatch.setattr(context, "_global_client", fake)
    yield fake
    fake.release.set()


@pytest.mark.parametrize("client", ["closes"], indirect=True)
def test_the_drivers_handles_are_closed(client: Client) -> None:
    local.close_handles()
    assert client.calls == 1


@pytest.mark.parametrize("client", ["raises"], indirect=True)
def test_a_handle_that_fails_to_close_is_logged_and_the_stop_goes_on(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="servekit"):
        local.close_handles()
    assert client.calls == 1
    assert "deployment handles not closed: router loop gone" in caplog.text


@pytest.mark.parametrize("client", ["hangs"], indirect=True)
def test_a_handle_that_hangs_holds_the_stop_for_the_bound_only(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "HANDLES_CLOSE_TIMEOUT_S", 0.2)
    started = time.monotonic()
    local.close_handles()
    assert 0.2 <= time.monotonic() - started < 2
    assert client.calls == 1


def test_a_driver_that_never_used_serve_has_nothing_to_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(context, "_global_client", None)
    local.close_handles()  # returns at once, raises nothing
