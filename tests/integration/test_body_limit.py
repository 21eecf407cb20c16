"""Every route's body is bounded by the replica's `limits.max_body_bytes`, those FastAPI
parses as well as the hot routes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import LIMITS, Service

pytestmark = pytest.mark.integration

OVER = LIMITS["max_body_bytes"] + 1


def _chunks(total: int, size: int = 50_000) -> Iterator[bytes]:
    while total > 0:
        yield b" " * min(size, total)
        total -= size


def test_a_body_fastapi_parses_is_413_past_the_configured_limit(service: Service) -> None:
    body = b'{"pad": "' + b"x" * OVER + b'"}'
    with service.client(headers={"content-type": "application/json"}) as client:
        for method, path, content in (
            ("POST", "/v1/events", body),
            ("PUT", "/v1/catalogs/c/items", body),
            ("POST", "/v1/events", _chunks(OVER)),  # chunked: refused while it streams
        ):
            got = client.request(method, path, content=content)
            assert got.status_code == 413, (path, got.text)
            assert got.json()["error"]["code"] == "payload_too_large"
            assert f"{LIMITS['max_body_bytes']}-byte limit" in got.json()["error"]["message"]
