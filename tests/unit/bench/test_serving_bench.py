"""The serving benchmark's auth pair: on and off run twice each, the ratio over both."""

from __future__ import annotations

from typing import Any

from bench.serving import auth_ratios


def _run(c1: float, c16: float, c32: float | None = None) -> dict[str, Any]:
    run = {"single_c1": {"texts_per_s": c1}, "single_c16": {"texts_per_s": c16}}
    if c32 is not None:
        run["batch32_c4"] = {"texts_per_s": c32}
    return run


def test_the_auth_ratio_is_taken_over_every_run_of_each_side() -> None:
    servers = {
        "servekit": {"workloads": _run(200, 600, 1000), "again": [_run(300, 500)]},
        "servekit-auth-off": {"workloads": _run(250, 550, 900), "again": [_run(250, 650)]},
    }
    assert auth_ratios(servers) == {"auth_on_vs_off_c1": 1.0, "auth_on_vs_off_c16": 0.917}


def test_one_run_of_each_is_a_ratio_of_the_two_and_a_missing_side_none() -> None:
    servers: dict[str, Any] = {
        "servekit": {"workloads": _run(200, 600, 1000)},
        "servekit-auth-off": {"workloads": _run(250, 500, 900)},
    }
    assert auth_ratios(servers) == {"auth_on_vs_off_c1": 0.8, "auth_on_vs_off_c16": 1.2}
    del servers["servekit-auth-off"]
    assert auth_ratios(servers) == {}
