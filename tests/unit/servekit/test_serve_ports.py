"""Serve's fixed ports (HAProxy's stats and metrics, the fallback proxies') are moved
off those another instance holds before Ray starts; one a variable names must be
free, and the refusal names the variable."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from servekit import instance
from tests.conftest import free_port

STATS, METRICS = "SERVEKIT_TEST_STATS_PORT", "SERVEKIT_TEST_METRICS_PORT"


@pytest.fixture
def held() -> Iterator[int]:
    """A port another instance listens on, on every interface (as HAProxy does)."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (STATS, METRICS):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)


def test_a_held_default_is_replaced_by_a_free_port(held: int) -> None:
    free = free_port()
    lines = instance.claim_serve_ports({STATS: (held, "stats"), METRICS: (free, "metrics")})
    moved = int(os.environ[STATS])
    assert moved != held
    assert instance.port_free("0.0.0.0", moved)
    assert os.environ[METRICS] == str(free)  # a free default is kept
    assert len(lines) == 1
    assert lines[0].startswith(f"port {held} (stats) is in use by pid {os.getpid()} ")
    assert lines[0].endswith(f": this instance uses {moved} ({STATS})")


def test_a_held_port_a_variable_names_is_refused_by_name(
    held: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATS, str(held))
    with pytest.raises(instance.InstanceError, match=rf"port {held} \({STATS}, stats\) is in use"):
        instance.claim_serve_ports({STATS: (8404, "stats")})


def test_a_free_port_a_variable_names_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv(STATS, str(port))
    assert instance.claim_serve_ports({STATS: (8404, "stats")}) == []
    assert os.environ[STATS] == str(port)


def test_a_variable_that_is_not_a_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STATS, "stats")
    with pytest.raises(instance.InstanceError, match=f"{STATS}='stats': not a port number"):
        instance.claim_serve_ports({STATS: (8404, "stats")})


def test_rays_own_variables_are_the_ones_settled() -> None:
    from ray.serve._private import constants

    for name, (default, _) in instance.SERVE_PORTS.items():
        assert hasattr(constants, name)
        if name not in os.environ:
            assert getattr(constants, name) == default
